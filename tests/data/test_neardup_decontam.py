import json
from pathlib import Path

import pytest

from codetune.data.decontam import (
    EvalItem,
    decontaminate,
    load_humaneval,
    register_eval_set,
    strip_docstrings,
)
from codetune.data.neardup import (
    canonical_tokens,
    code_tokens,
    jaccard,
    lsh_params,
    near_duplicate_clusters,
    shingles,
)
from codetune.data.prepare import prepare
from codetune.data.records import Example
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from tests.conftest import make_pairs, tiny_config, write_jsonl

LONG = """def parse_header(line, sep=":"):
    name, _, value = line.partition(sep)
    name = name.strip().lower()
    if not name:
        raise ValueError("empty header name in %r" % line)
    return name, value.strip()
"""


def test_canonical_tokens_ignore_consistent_renaming() -> None:
    renamed = LONG.replace("name", "key").replace("value", "rest").replace("line", "text")
    assert canonical_tokens(LONG) == canonical_tokens(renamed)
    assert code_tokens(LONG) != code_tokens(renamed)
    assert canonical_tokens("x = len(y)") == ["v0", "=", "len", "(", "v1", ")"]


def test_lsh_params_and_jaccard() -> None:
    bands, rows = lsh_params(0.85, 128)
    assert bands * rows <= 128 and (bands, rows) == (8, 16)
    a, b = shingles(list("abcdef"), 3), shingles(list("abcdeg"), 3)
    assert jaccard(a, b) == pytest.approx(3 / 5)


def test_near_duplicate_clusters_keep_the_first_and_list_members() -> None:
    variant = LONG.replace(
        'raise ValueError("empty header name in %r" % line)', 'raise ValueError("bad: %r" % line)'
    )
    other = "def total(xs):\n    acc = 0\n    for x in xs:\n        acc += x * x\n    return acc\n"
    codes = [other, LONG, "print('unrelated')", variant, LONG + "\n# trailing comment\n"]
    clusters = near_duplicate_clusters(codes, threshold=0.7, num_perm=128, ngram=5)
    assert [c.members for c in clusters] == [[1, 3, 4]]
    assert 0.7 <= clusters[0].min_similarity < 1.0
    assert near_duplicate_clusters(codes, threshold=0.99) == []


def test_decontamination_catches_a_planted_humaneval_copy_with_renamed_variables() -> None:
    problems = {p.id: p for p in load_humaneval({})}
    assert len(problems) == 164
    # HumanEval/0's canonical solution, every local and the function renamed, no docstring.
    planted = (
        "def any_pair_within(values: List[float], limit: float) -> bool:\n"
        "    for i, a in enumerate(values):\n"
        "        for j, b in enumerate(values):\n"
        "            if i != j:\n"
        "                gap = abs(a - b)\n"
        "                if gap < limit:\n"
        "                    return True\n\n"
        "    return False\n"
    )
    train = [
        Example("planted", "Tell whether two values are closer than a limit.", planted),
        Example("innocent", "Parse one header line.", LONG),
        Example("short", "Length.", "def f(s):\n    return len(s)"),
    ]
    result = decontaminate(train, {"humaneval": list(problems.values())})
    assert [e.id for e in result.kept] == ["innocent", "short"]
    (m,) = result.matches
    assert (m.id, m.eval_set, m.eval_id, m.method) == ("planted", "humaneval", "HumanEval/0", "near_dup")
    assert result.too_short == 1 and result.checked == 2
    # The copy is not an n-gram match: only the renaming-aware check finds it.
    assert decontaminate(train, {"humaneval": list(problems.values())}, near_dup_threshold=1.01).matches == []


def test_ngram_overlap_is_found_and_docstrings_are_ignored_for_near_dups() -> None:
    item = EvalItem(
        "t1", "Parse one header line of an HTTP message into its name and its value, lower case.", "x"
    )
    train = [
        Example("copy", "Parse one header line of an HTTP message into its name and its value.", "y = 1")
    ]
    result = decontaminate(train, {"mine": [item]}, ngram=13)
    assert [(m.id, m.method, m.evidence) for m in result.matches] == [
        ("copy", "ngram", "parse one header line of an http message into its name and its")
    ]
    assert (
        strip_docstrings('import os\n\ndef f():\n    """Doc."""\n    return 1\n')
        == "\ndef f():\n    return 1\n"
    )


def test_prepare_decontaminates_train_and_can_fail(tmp_path: Path) -> None:
    rows = make_pairs()
    long_code = LONG.replace("parse_header", "parse_header_{i}")
    rows += [
        {
            "uid": f"long-{i}",
            "docstring": f"Parse header {i}.",
            "code": long_code.format(i=i),
            "repo": f"L{i}",
        }
        for i in range(4)
    ]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    for seed in range(20):  # the first seed that puts copies of LONG in both train and test
        cfg = tiny_config(
            tmp_path / str(seed),
            src,
            data={"split_by": "group", "seed": seed, "splits": {"train": 0.6, "valid": 0.1, "test": 0.3}},
        )
        out = prepare(cfg)
        test_ids = {r["id"] for r in read_jsonl(out / "test.jsonl")}
        if any(i.startswith("long-") for i in test_ids):
            break
    m = json.loads((out / "manifest.json").read_text())
    train_ids = {r["id"] for r in read_jsonl(out / "train.jsonl")}
    d = m["decontamination"]
    contaminated = {e["id"] for e in d["examples"]}
    assert contaminated and all(i.startswith("long-") for i in contaminated)
    assert not (contaminated & train_ids) and not any(i.startswith("long-") for i in train_ids)
    assert d["eval_sets"] == {"test_split": {"items": len(test_ids)}}
    assert m["counts"]["filtered"]["contaminated"] == len(contaminated) == d["contaminated"]
    assert set(m["dropped_ids"]["contaminated"]) == contaminated
    cfg.data.decontamination.on_contamination = "fail"
    cfg.data.output_dir = str(tmp_path / "fail")
    with pytest.raises(CodetuneError, match=r"overlap the evaluation sets: long-\d+ ~ test_split:long-\d+"):
        prepare(cfg)


def test_eval_sets_are_pluggable(tmp_path: Path, pairs_file: Path) -> None:
    register_eval_set("planted-bench", lambda splits: [EvalItem("B/1", LONG, LONG)])
    rows = make_pairs() + [{"uid": "leak", "docstring": "Parse.", "code": LONG, "repo": "repo0"}]
    cfg = tiny_config(
        tmp_path,
        write_jsonl(tmp_path / "p.jsonl", rows),
        data={"decontamination": {"eval_sets": ["planted-bench"]}, "splits": {"train": 1.0}},
    )
    m = json.loads((prepare(cfg) / "manifest.json").read_text())
    assert m["decontamination"]["examples"][0]["id"] == "leak"
    assert m["decontamination"]["examples"][0]["eval_id"] == "B/1"
    with pytest.raises(CodetuneError, match="unknown evaluation set 'nope'"):
        prepare(tiny_config(tmp_path / "x", pairs_file, data={"decontamination": {"eval_sets": ["nope"]}}))
