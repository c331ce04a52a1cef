import json
import random
from pathlib import Path

from codetune.benchmarks.humaneval import load_problems
from codetune.config import AugmentationConfig
from codetune.data.augment import add_noise, augment_examples, paraphrase, rename_identifiers
from codetune.data.prepare import prepare
from codetune.data.records import Example
from codetune.manifest import read_jsonl
from codetune.sandbox import SandboxPool
from tests.conftest import make_pairs, tiny_config, write_jsonl


def test_renaming_keeps_humaneval_solutions_passing_their_tests() -> None:
    problems = load_problems()[:40]
    jobs, renamed_count = [], 0
    for p in problems:
        code = p["prompt"] + p["canonical_solution"]
        tests = p["test"] + f"\ncheck({p['entry_point']})\n"
        got = rename_identifiers(code, random.Random(p["task_id"]))
        if isinstance(got, str):
            assert got == "nothing_to_rename", (p["task_id"], got)
            continue
        renamed_count += 1
        assert got.code != code and got.mapping
        assert p["entry_point"] not in got.mapping  # the function's name is its API
        jobs += [(code, tests), (got.code, tests)]
    assert renamed_count >= 35
    with SandboxPool(workers=2) as pool:
        verdicts = pool.map(jobs)
    assert [v.status for v in verdicts] == ["passed"] * len(jobs)


def test_renaming_leaves_free_names_attributes_and_keywords_alone() -> None:
    code = (
        "def scale(values, factor=2):\n"
        "    total = 0\n"
        "    for v in values:\n"
        "        total += helper(v, key=factor) * self_count\n"
        "    obj.total = total\n"
        "    return [w for w in values if w], sorted(values, key=len)\n"
    )
    got = rename_identifiers(code, random.Random(0), protected=["values"])
    assert not isinstance(got, str)
    assert set(got.mapping) == {"factor", "total", "v", "w"}
    assert "helper(" in got.code and "self_count" in got.code and "obj.total = " in got.code
    assert "key=" in got.code and "def scale(values, " in got.code
    assert rename_identifiers("def f(x):\n    return eval('x')", random.Random(0)) == "dynamic_scope"
    assert rename_identifiers("def f(:", random.Random(0)) == "does_not_parse"


def test_paraphrase_and_noise_are_template_and_sentence_level() -> None:
    assert paraphrase("Return the sum of a and b.", random.Random(0)) in {
        f"{lead}the sum of a and b."
        for lead in [
            "Compute and return ",
            "Give back ",
            "Write a function that returns ",
            "Implement a function to return ",
            "Implement a function to compute and return ",
            "Implement a function to give back ",
            "This function should return ",
            "This function should compute and return ",
            "This function should give back ",
            "Task: Return ",
            "Task: Compute and return ",
            "Task: Give back ",
        ]
    }
    noisy, op = add_noise("First sentence. Second one! Third?", random.Random(1)) or ("", "")
    assert op.split()[1] == "sentence" and noisy != "First sentence. Second one! Third?"
    assert add_noise("Short.", random.Random(0)) is None


def test_augmented_examples_carry_their_origin_and_tests_gate_renaming() -> None:
    good = Example(
        "g", "Add one.", "def inc(n):\n    m = n + 1\n    return m", meta={"tests": "assert inc(1) == 2"}
    )
    kw = Example("k", "Add one.", "def inc(n):\n    return n + 1", meta={"tests": "assert inc(n=1) == 2"})
    calls: list[list[tuple[str, str]]] = []

    def run(jobs: list[tuple[str, str]]) -> list[bool]:
        calls.append(jobs)
        with SandboxPool(workers=1) as pool:
            return [v.passed for v in pool.map(jobs)]

    result = augment_examples([good, kw], AugmentationConfig(rename_rate=1.0), run)
    assert [e.id for e in result.added] == ["g~rename"]
    assert result.added[0].meta["augmented"]["origin"] == "g"
    assert result.added[0].meta["augmented"]["tests_passed"] is True
    assert result.rejected == {"rename: renamed_fails_tests": 1}  # inc(n=1) breaks when n is renamed
    assert len(calls) == 1 and len(calls[0]) == 4


def test_prepare_augments_train_only(tmp_path: Path) -> None:
    rows = make_pairs()
    for r in rows:
        r["code"] = r["code"].replace("return", "result =") + "    return result\n"
        r["tests"] = f"assert {r['code'].split('(')[0][4:]}(7, 2) is not None"
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = tiny_config(
        tmp_path,
        src,
        data={"augmentation": {"rename_rate": 0.5, "paraphrase_rate": 0.5, "noise_rate": 0.5, "seed": 3}},
    )
    cfg.data.sources[0].tests_field = "tests"
    out = prepare(cfg)
    m = json.loads((out / "manifest.json").read_text())
    train, valid, test = (read_jsonl(out / f"{s}.jsonl") for s in ("train", "valid", "test"))
    assert not any("augmented" in r["meta"] for r in valid + test)
    added = [r for r in train if "augmented" in r["meta"]]
    kinds = {r["meta"]["augmented"]["kind"] for r in added}
    assert kinds == {"rename", "paraphrase", "noise"}
    originals = {r["id"] for r in train if "augmented" not in r["meta"]}
    assert all(r["meta"]["augmented"]["origin"] in originals for r in added)
    assert all(
        r["id"] == f"{r['meta']['augmented']['origin']}~{r['meta']['augmented']['kind']}" for r in added
    )
    assert m["counts"]["kept"] == 42 and m["counts"]["splits"]["train"] == len(train)
    assert sum(m["counts"]["added"].values()) == len(added)
    renamed = [r for r in added if r["meta"]["augmented"]["kind"] == "rename"]
    assert renamed and all(r["meta"]["augmented"]["tests_passed"] for r in renamed)
