"""Self-training by execution: the loop on a tiny random-init model with a scripted sampler and judge
(counts pinned), the leak checks, resume, and the real sandbox judge on literal candidates."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from codetune.benchmarks import Program, PromptStyle, SandboxSpec, Task
from codetune.benchmarks import base as registry
from codetune.config import Config, load_config
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from codetune.models.backends.base import Completion
from codetune.selftraining import (
    Candidate,
    ModelSampler,
    SandboxJudge,
    load_training_tasks,
    normalised_code,
    select_passing,
    selftrain,
    tamper_signs,
)
from tests.conftest import TINY_MODEL

# --- a toy benchmark: three train tasks, two test tasks ------------------------------------------

ADD = "def f(a, b):\n    return a + b\n"
ADD_DOC = 'def f(a, b):\n    """Add."""\n    # the sum\n    return (a +  b)\n'  # ADD after normalising
ADD_B = "def f(a, b):\n    s = a + b\n    return s\n"
ADD_C = "def f(a, b):\n    return sum([a, b])\n"
ADD_D = "def f(a, b):\n    return b + a\n"
SUB = "def f(a, b):\n    return a - b\n"
SUB_B = "def f(a, b):\n    return -(b - a)\n"
SUB_C = "def f(a, b):\n    return a + -b\n"
MUL = "def f(a, b):\n    return a * b\n"
MUL_DOC = "def f(a, b):\n    '''Multiply.'''\n    return a * b\n"


def bad(i: int) -> str:
    return f"def f(a, b):\n    return {i}\n"


TRAIN = [
    Task(id="add", prompt="Return a plus b.", tests="assert f(2, 3) == 5", split="train", benchmark="toy"),
    Task(id="sub", prompt="Return a minus b.", tests="assert f(2, 3) == -1", split="train", benchmark="toy"),
    Task(id="mul", prompt="Return a times b.", tests="assert f(2, 3) == 6", split="train", benchmark="toy"),
]
TEST = [
    Task(id="pow", prompt="Return a to the power b.", tests="assert f(2, 3) == 8", group="g-pow"),
    Task(id="div", prompt="Return a divided by b.", tests="assert f(3, 2) == 1.5", benchmark="toy"),
]
PASSING = {ADD, ADD_DOC, ADD_B, ADD_C, ADD_D, SUB, SUB_B, SUB_C, MUL, MUL_DOC}


def passes(code: str) -> bool:
    """The scripted verdict: a known answer (up to comments and layout)."""
    return normalised_code(code) in {normalised_code(c) for c in PASSING}


# What the scripted model writes: round 1 solves add and sub (with a duplicate and one over m=2 each),
# never mul; round 2 writes add's known answers again plus a new one, and solves mul (twice, the same).
ROUND_1 = {
    "add": [ADD, ADD_DOC, bad(1), ADD_B, ADD_C],
    "sub": [SUB, bad(2), SUB_B, SUB_B + "\n# again\n", SUB_C],
    "mul": [bad(3), bad(4), bad(5), bad(6), "while True:\n    pass\n"],
}
ROUND_2 = {
    "add": [ADD_B, ADD, ADD_D, bad(7), bad(8)],
    "sub": [bad(9), bad(10), bad(11), bad(12), bad(13)],
    "mul": [MUL, MUL_DOC, bad(14), bad(15), bad(16)],
}


class Toy:
    name = "toy"
    splits: tuple[str, ...] = ("test", "train")
    ks: tuple[int, ...] = (1,)

    def __init__(self, train: Sequence[Task] = TRAIN) -> None:
        self.train = list(train)

    def load(self, split: str) -> list[Task]:
        return self.train if split == "train" else list(TEST)

    def build_prompt(self, task: Task, style: PromptStyle) -> str:
        return style.render(task.prompt)

    def stops(self, style: PromptStyle) -> tuple[str, ...]:
        return ()

    def sanitise(self, task: Task, completion: str, style: PromptStyle) -> str:
        return completion

    def assemble(self, task: Task, code: str) -> Program:
        return Program(code, task.tests)

    def sandbox(self) -> SandboxSpec:
        from codetune.sandbox import Limits

        return SandboxSpec(Limits(timeout_s=5.0))

    def describe(self, split: str) -> dict[str, Any]:
        return {"split": split}


@pytest.fixture
def toy() -> Iterator[None]:
    registry.register("toy", Toy)
    yield
    registry._REGISTERED.pop("toy", None)


class Script:
    """A scripted sampler per round and a judge that looks samples up (no code runs); both record
    what they were asked."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.sampled: list[tuple[list[str], int, int]] = []  # (task ids, n, seed) per call
        self.judged: list[str] = []  # task ids of the judged samples

    def sampler_for(self, model: str) -> Any:
        self.models.append(model)
        script = ROUND_1 if len(self.models) == 1 else ROUND_2

        def sample(tasks: Sequence[Task], n: int, seed: int) -> list[list[Candidate]]:
            self.sampled.append(([t.id for t in tasks], n, seed))
            return [
                [Candidate(code, raw=f"```python\n{code}```") for code in script[t.id][:n]] for t in tasks
            ]

        return sample

    def judge(self, jobs: Sequence[tuple[Task, str]]) -> list[str]:
        self.judged += [t.id for t, _ in jobs]
        return ["passed" if passes(code) else "timeout" if "while" in code else "failed" for _, code in jobs]


def toy_config(tmp_path: Path, **selftrain: Any) -> Config:
    raw: dict[str, Any] = {
        "model": copy.deepcopy(TINY_MODEL),
        "train": {"max_steps": 2, "batch_size": 2, "lr": 3e-3, "warmup_ratio": 0.0, "tensorboard": False},
        "selftrain": {"tasks": ["toy/train"], "n": 5, "m": 2, "rounds": 2, "unit_size": 2, "temperature": 0.8}
        | {"output_dir": str(tmp_path / "st")}
        | selftrain,
    }
    return load_config(None, raw)


# --- the pure core -------------------------------------------------------------------------------


def test_normalised_code_ignores_docstrings_comments_and_layout_only() -> None:
    assert normalised_code(ADD) == normalised_code(ADD_DOC)
    assert normalised_code(MUL) == normalised_code(MUL_DOC)
    assert normalised_code(SUB_B) == normalised_code(SUB_B + "\n# again\n")
    assert normalised_code(ADD) != normalised_code(ADD_D)  # a different program is a different sample
    assert normalised_code(ADD) != normalised_code(ADD.replace("a + b", "a + b + 0"))
    # code that does not parse: compared by its tokens
    assert normalised_code("def f(:\n  return 1  # x") == normalised_code("def f( :\n    return 1")


def test_selection_keeps_passing_distinct_samples_up_to_m() -> None:
    tasks = TRAIN[:2]
    cands = [[Candidate(c) for c in ROUND_1[t.id]] for t in tasks]
    statuses = [["passed" if passes(c.code) else "failed" for c in row] for row in cands]
    sel = select_passing(tasks, cands, statuses, m=2)
    assert sel.kept == {"add": [ADD, ADD_B], "sub": [SUB, SUB_B]}
    assert {k: sel.counts[k] for k in ("passed", "duplicates", "over_cap", "kept", "tasks_solved")} == {
        "passed": 8,
        "duplicates": 2,
        "over_cap": 2,
        "kept": 4,
        "tasks_solved": 2,
    }
    # with earlier rounds' samples: those count towards m and as duplicates
    later = select_passing(
        tasks[:1], [[Candidate(ADD_DOC), Candidate(ADD_D)]], [["passed"] * 2], 3, {"add": [ADD]}
    )
    assert later.kept == {"add": [ADD_D]}
    assert (later.counts["duplicates"], later.counts["over_cap"]) == (1, 0)


FORGERIES = [  # passing samples as a forger would write them: none may become training data
    "import unittest\nunittest.TestResult.wasSuccessful = lambda self: True\ndef add(a, b):\n    return 0\n",
    "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "class Any:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Any()\n",
    "import gc\ndef add(a, b):\n    return [o for o in gc.get_objects()][0]\n",
    "def add(a, b):\n    f = add.__code__\n    return a + b\n",
    "from ctypes import pythonapi\ndef add(a, b):\n    return a + b\n",
]


def test_samples_that_could_have_forged_their_pass_are_not_kept() -> None:
    assert [tamper_signs(code) for code in FORGERIES] == [
        ["import unittest"],
        [".exit"],
        ["def __eq__"],
        ["import gc"],
        [".__code__"],
        ["import ctypes"],
    ]
    assert tamper_signs(ADD) == [] and tamper_signs(SUB_B) == []
    assert tamper_signs("import sys\nx = sys.maxsize\n") == []  # sys itself is fine
    assert tamper_signs("process.exit(0)", "javascript") == []  # only Python is screened
    sel = select_passing(TRAIN[:1], [[Candidate(c) for c in [*FORGERIES, ADD]]], [["passed"] * 7], m=2)
    assert sel.kept == {"add": [ADD]}
    assert (sel.counts["passed"], sel.counts["screened"], sel.counts["kept"]) == (7, 6, 1)
    assert sel.counts["screened_signs"] == {
        ".__code__": 1,
        ".exit": 1,
        "def __eq__": 1,
        "import ctypes": 1,
        "import gc": 1,
        "import unittest": 1,
    }


# --- the loop ------------------------------------------------------------------------------------


def test_selftrain_keeps_only_passing_distinct_samples_and_trains_on_them(tmp_path: Path, toy: None) -> None:
    cfg = toy_config(tmp_path)
    script = Script()
    out = selftrain(cfg, sampler_for=script.sampler_for, judge=script.judge)

    # round 1 samples the base model, round 2 the model round 1 trained; seeds follow task positions
    r1_final = str(out / "round-1" / "train" / "final")
    assert script.models == ["tiny", r1_final]
    assert script.sampled == [
        (["add", "sub"], 5, 0),
        (["mul"], 5, 10),
        (["add", "sub"], 5, 15),
        (["mul"], 5, 25),
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    rounds = [
        {
            k: r[k]
            for k in (
                "tasks_tried",
                "tasks_solved",
                "samples",
                "passed",
                "screened",
                "duplicates",
                "over_cap",
                "kept",
                "train_examples",
                "statuses",
            )
        }
        for r in manifest["rounds"]
    ]
    assert rounds == [
        {"tasks_tried": 3, "tasks_solved": 2, "samples": 15, "passed": 8, "screened": 0, "duplicates": 2, "over_cap": 2,
         "kept": 4, "train_examples": 4, "statuses": {"failed": 6, "passed": 8, "timeout": 1}},
        {"tasks_tried": 3, "tasks_solved": 2, "samples": 15, "passed": 5, "screened": 0, "duplicates": 3, "over_cap": 1,
         "kept": 1, "train_examples": 5, "statuses": {"failed": 10, "passed": 5}},
    ]  # fmt: skip
    assert manifest["kept_per_task"] == {"add": [2, 0], "sub": [2, 0], "mul": [0, 1]}
    assert manifest["final_model"] == str(out / "round-2" / "train" / "final")
    assert (out / "round-2" / "train" / "final" / "codetune.json").is_file()
    assert manifest["sampling"] == {"n": 5, "m": 2, "temperature": 0.8, "seed": 0, "rounds": 2}
    assert manifest["splits_used"] == ["train"]
    assert manifest["leak_check"] == {
        "held_out": [{"split": "toy/test", "tasks": 2}],
        "overlap": 0,
        "checked_by": ["id", "prompt", "group"],
    }

    # each round's data folder is a prepared train split that `train` read unchanged
    rows = read_jsonl(out / "round-2" / "data" / "train.jsonl")
    assert [(r["id"], r["code"]) for r in rows] == [
        ("add#0", ADD),
        ("add#1", ADD_B),
        ("sub#0", SUB),
        ("sub#1", SUB_B),
        ("mul#0", MUL),
    ]
    assert all(passes(r["code"]) for r in rows)
    assert {r["nl"] for r in rows} == {t.prompt for t in TRAIN}
    data_manifest = json.loads((out / "round-2" / "data" / "manifest.json").read_text())
    assert data_manifest["outputs"]["train"]["count"] == 5
    assert data_manifest["round"] == 2 and data_manifest["model"] == r1_final
    train_manifest = json.loads((out / "round-2" / "train" / "manifest.json").read_text())
    assert train_manifest["data"]["examples"] == 5
    assert train_manifest["data"]["train_sha256"] == data_manifest["outputs"]["train"]["sha256"]

    # no test task was sampled, judged or trained on
    test_ids, test_prompts = {t.id for t in TEST}, {t.prompt for t in TEST}
    assert not test_ids & {tid for ids, _, _ in script.sampled for tid in ids}
    assert not test_ids & set(script.judged)
    assert not test_prompts & {
        r["nl"] for k in (1, 2) for r in read_jsonl(out / f"round-{k}" / "data" / "train.jsonl")
    }


def test_a_rerun_neither_samples_nor_judges_nor_trains_again(tmp_path: Path, toy: None) -> None:
    cfg = toy_config(tmp_path, rounds=1)
    first = Script()
    out = selftrain(cfg, sampler_for=first.sampler_for, judge=first.judge)
    before = json.loads((out / "manifest.json").read_text())["rounds"]
    weights = out / "round-1" / "train" / "final" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    again = Script()
    selftrain(cfg, sampler_for=again.sampler_for, judge=again.judge)
    assert again.sampled == [] and again.judged == []
    assert weights.stat().st_mtime_ns == mtime
    after = json.loads((out / "manifest.json").read_text())["rounds"]
    drop = ("seconds_this_run", "seconds")  # wall times of this run
    assert [{k: v for k, v in r.items() if k not in drop} for r in after] == [
        {k: v for k, v in r.items() if k not in drop} for r in before
    ]

    # other settings keep other samples: the round trained on the old ones is not silently reused
    with pytest.raises(CodetuneError, match=r"round-1/train was trained on other samples"):
        selftrain(toy_config(tmp_path, rounds=1, m=1), sampler_for=again.sampler_for, judge=again.judge)
    assert again.sampled == [] and again.judged == []


def test_an_interrupted_round_continues_from_its_cached_samples_and_verdicts(
    tmp_path: Path, toy: None, capfd: pytest.CaptureFixture
) -> None:
    cfg = toy_config(tmp_path, rounds=1)
    first = Script()

    def judge_then_crash(jobs: Sequence[tuple[Task, str]]) -> list[str]:
        if first.judged:
            raise KeyboardInterrupt
        return first.judge(jobs)

    with pytest.raises(KeyboardInterrupt):
        selftrain(cfg, sampler_for=first.sampler_for, judge=judge_then_crash)
    assert len(first.sampled) == 2 and len(first.judged) == 2  # all sampled, one unit of 2 judged

    again = Script()
    capfd.readouterr()
    out = selftrain(cfg, sampler_for=again.sampler_for, judge=again.judge)
    assert again.sampled == []
    done = next(line for line in capfd.readouterr().err.splitlines() if "sample: done" in line)
    assert done.endswith("decoded now 0 unit(s), the rest from samples.jsonl"), done
    # 15 distinct (task, code) samples: 2 judged before the crash, the other 13 now
    assert len(again.judged) == 13
    assert json.loads((out / "manifest.json").read_text())["rounds"][0]["kept"] == 4


# --- no leaks ------------------------------------------------------------------------------------


def test_an_evaluation_split_is_refused_as_a_task_source(tmp_path: Path, toy: None) -> None:
    with pytest.raises(CodetuneError, match=r"selftrain\.tasks\[1\]: 'toy/test' is the 'test' split"):
        load_training_tasks(toy_config(tmp_path, tasks=["toy/train", "toy/test"]))
    script = Script()
    with pytest.raises(CodetuneError, match=r"selftrain\.tasks\[0\]"):
        selftrain(
            toy_config(tmp_path, tasks=["toy/test"]), sampler_for=script.sampler_for, judge=script.judge
        )
    assert script.sampled == [] and not (tmp_path / "st").exists()


def test_training_tasks_that_clash_with_held_out_tasks_are_refused(tmp_path: Path, toy: None) -> None:
    same_id = Task(id="pow", prompt="Something else.", tests="assert True", split="train")
    same_prompt = Task(id="p2", prompt="Return  a divided\nby b.", tests="assert True", split="train")
    same_group = Task(id="p3", prompt="Raise a to b.", tests="assert True", split="train", group="g-pow")
    marked_test = Task(id="t3", prompt="Fine.", tests="assert True", split="test")
    for task, found in ((same_id, "pow"), (same_prompt, "p2"), (same_group, "p3")):
        registry.register("toy", functools.partial(Toy, [*TRAIN, task]))
        with pytest.raises(CodetuneError, match=rf"held-out toy/test: {found}"):
            load_training_tasks(toy_config(tmp_path))
    registry.register("toy", lambda: Toy([*TRAIN, marked_test]))
    with pytest.raises(
        CodetuneError, match=r"selftrain\.tasks\[0\]: task 't3' of toy/train is marked split 'test'"
    ):
        load_training_tasks(toy_config(tmp_path))


def test_tasks_per_group_takes_the_first_paraphrases_of_each_problem(tmp_path: Path, toy: None) -> None:
    grouped = [replace(t, group="g1" if t.id != "mul" else "g2") for t in TRAIN]
    registry.register("toy", functools.partial(Toy, grouped))
    tasks = load_training_tasks(toy_config(tmp_path, tasks_per_group=1))
    assert [t.id for t in tasks.tasks] == ["add", "mul"]
    assert tasks.sources == [{"spec": "toy/train", "benchmark": "toy", "split": "train", "tasks": 3}]


def test_a_task_file_feeds_its_train_tasks_and_holds_out_its_others(tmp_path: Path) -> None:
    rows = [
        {"id": "add", "prompt": "Return a plus b.", "tests": "assert f(2, 3) == 5", "split": "train"},
        {"id": "sub", "prompt": "Return a minus b.", "tests": "assert f(2, 3) == -1", "split": "train"},
        {"id": "pow", "prompt": "Return a to the power b.", "tests": "assert f(2, 3) == 8"},  # test
    ]
    file = tmp_path / "mine.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_training_tasks(toy_config(tmp_path, tasks=[str(file)]))
    assert [t.id for t in got.tasks] == ["add", "sub"]
    assert got.leak_check["held_out"] == [{"split": f"{file} [test]", "tasks": 1}]

    rows[1]["prompt"] = "Return  a to the power b."  # a train task that is the test task reworded by space
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CodetuneError, match=rf"held-out {file} \[test\]: sub"):
        load_training_tasks(toy_config(tmp_path, tasks=[str(file)]))
    file.write_text(json.dumps(rows[2]) + "\n")  # nothing marked train
    with pytest.raises(CodetuneError, match=r"selftrain\.tasks\[0\]: .* is the 'test' split.*mark its tasks"):
        load_training_tasks(toy_config(tmp_path, tasks=[str(file)]))


def test_held_out_splits_can_be_named(tmp_path: Path, toy: None) -> None:
    tasks = load_training_tasks(toy_config(tmp_path, held_out=["toy/test", "toy/test"], max_tasks=2))
    assert [t.id for t in tasks.tasks] == ["add", "sub"]
    assert tasks.leak_check["held_out"] == [{"split": "toy/test", "tasks": 2}]


# --- the model sampler, on a scripted backend ------------------------------------------------------


class ScriptedBackend:
    """Answers every prompt with ADD in a fence; records the prompts and settings it was given."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Any]] = []

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def generate(self, prompts: Sequence[str], settings: Any) -> list[list[Completion]]:
        self.calls.append((list(prompts), settings))
        reply = Completion(f"```python\n{ADD}```", "stop", 3, 7)
        return [[reply] * settings.n for _ in prompts]


class FencedToy(Toy):
    def stops(self, style: PromptStyle) -> tuple[str, ...]:
        return ("\n# end",)

    def sanitise(self, task: Task, completion: str, style: PromptStyle) -> str:
        return completion.removeprefix("```python\n").removesuffix("```")


def test_the_model_sampler_prompts_as_training_does_and_seeds_by_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import codetune.generation

    backend = ScriptedBackend()
    loaded: list[tuple[Any, str]] = []

    def load_backend(g: Any, model: str) -> ScriptedBackend:
        loaded.append((g, model))
        return backend

    monkeypatch.setattr(codetune.generation, "load_backend", load_backend)
    cfg = toy_config(tmp_path)
    cfg.prompt = replace(cfg.prompt, style="chat", template="{nl}", answer_template="```python\n{code}\n```")
    one, other = FencedToy(), FencedToy()  # two benchmarks: add and sub from one, mul from the other
    sampler = ModelSampler(cfg, "some-model", {"add": one, "sub": one, "mul": other})
    rows = sampler(TRAIN, 3, 100)

    assert [m for _, m in loaded] == ["some-model"] and loaded[0][0].temperature == 0.8
    assert [prompts for prompts, _ in backend.calls] == [
        ["<user>Return a plus b.<assistant>", "<user>Return a minus b.<assistant>"],
        ["<user>Return a times b.<assistant>"],
    ]
    seeds = [(s.seed, s.n, s.temperature) for _, s in backend.calls]
    assert seeds == [(100, 3, 0.8), (106, 3, 0.8)]  # task i's samples start at seed + i*n
    assert backend.calls[0][1].stop == ("\n```\n", "\n# end")  # the answer's closing fence, the benchmark's
    assert [[c.code for c in row] for row in rows] == [[ADD] * 3] * 3
    assert rows[0][0] == Candidate(ADD, f"```python\n{ADD}```", "stop", tokens=7)
    sampler(TRAIN[:1], 3, 0)
    assert len(loaded) == 1  # the model is loaded once


# --- the real sandbox ----------------------------------------------------------------------------


def test_the_sandbox_judge_passes_only_code_that_passes_its_tests(toy: None) -> None:
    task = TRAIN[0]
    forged = "import os, sys\nprint('passed')\nsys.stdout.flush()\nos._exit(0)\n"
    with SandboxJudge({task.id: Toy()}, workers=1) as judge:
        statuses = judge([(task, ADD), (task, SUB), (task, forged), (task, "import sys\nsys.exit(0)\n")])
        assert judge.isolation["toy"]  # what the manifest records
    assert statuses[:2] == ["passed", "failed"]
    assert "passed" not in statuses[2:]  # exiting "successfully" before the tests is no pass


# --- the command ---------------------------------------------------------------------------------


def test_the_command_refuses_a_test_split_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    import codetune

    assert codetune.selftrain is selftrain
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"selftrain: {{tasks: [dataframebench/test], output_dir: {tmp_path / 'st'}}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "codetune.cli", "selftrain", str(cfg), "--selftrain.n=2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "selftrain.tasks[0]: 'dataframebench/test' is the 'test' split" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "st").exists()
