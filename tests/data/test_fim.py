import json
import math
import random
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from codetune.config import TinyModelConfig
from codetune.data.fim import FimEncoder, fim_examples, make_fim_sample, split_points
from codetune.data.format import IGNORE_INDEX
from codetune.data.mine import MineStats, mine_python
from codetune.data.prepare import prepare
from codetune.data.records import Example
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from codetune.models.fim import FIM_CONVENTIONS
from codetune.models.tiny import build_tiny_model, train_tokenizer
from codetune.training.loop import encode_examples, train
from tests.conftest import make_pairs, tiny_config, write_jsonl

STAR = FIM_CONVENTIONS["starcoder"]


def fim_tokenizer() -> Any:
    tok = train_tokenizer(
        ["def f(x):\n    return x + 1\n", "Return the sum.", "if a:\n    b = 2\n"] * 20, 300
    )
    tok.add_tokens([STAR.prefix, STAR.suffix, STAR.middle], special_tokens=True)
    return tok


def stdlib_functions() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    codes = []
    for name in ("textwrap.py", "json/decoder.py", "shlex.py", "string.py"):
        text = (stdlib / name).read_text(encoding="utf-8")
        found = mine_python(text, name, MineStats(root=""))
        codes += [f.code.rstrip("\n") for f in found or []] + [text]  # functions and the whole module
    return codes


def test_fim_samples_reassemble_exactly_and_split_at_statement_starts() -> None:
    codes = stdlib_functions()
    assert len(codes) >= 30
    modes = set()
    for k, code in enumerate(codes):
        points = split_points(code)
        assert points[0] == 0 and points[-1] == len(code)
        assert all(code[p - 1] == "\n" for p in points[1:-1])  # line starts: never inside a token
        for seed in range(5):
            s = make_fim_sample(code, random.Random(f"{k}:{seed}"), spm_rate=0.5)
            assert s is not None and s.middle
            assert s.reassemble() == code
            modes.add(s.mode)
    assert modes == {"psm", "spm"}


def test_split_points_skip_continuation_lines_and_one_line_bodies() -> None:
    code = "def f(x):\n    y = (x +\n         1)\n    if y: return y\n    @deco\n    def g():\n        pass\n    return g"
    starts = [
        code.index(s) for s in ("def f", "    y =", "    if y", "    @deco", "        pass", "    return g")
    ]
    assert split_points(code) == [*starts, len(code)]
    assert split_points("a\nb", language="javascript") == [0, 2, 3]


def test_fim_labels_cover_exactly_the_middle_tokens() -> None:
    tok = fim_tokenizer()
    enc = FimEncoder(tok)
    fim = {
        "prefix": "def f(x):\n",
        "middle": "    y = x + 1\n",
        "suffix": "    return y",
        "convention": "auto",
    }
    for mode in ("psm", "spm"):
        e = enc.encode("1", {**fim, "mode": mode}, "causal")
        n_prompt = sum(1 for label in e.labels if label == IGNORE_INDEX)
        middle_ids = tok(fim["middle"], add_special_tokens=False)["input_ids"]
        assert e.labels[n_prompt:] == [*middle_ids, tok.eos_token_id] == e.input_ids[n_prompt:]
        assert e.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        prompt = tok.decode(e.input_ids[:n_prompt])
        if mode == "psm":
            assert prompt.endswith(f"{STAR.prefix}def f(x):\n{STAR.suffix}    return y{STAR.middle}")
        else:
            assert prompt.endswith(f"{STAR.prefix}{STAR.suffix}    return y{STAR.middle}def f(x):\n")


def test_a_model_without_fim_tokens_is_a_clear_error(tiny_cfg: Any) -> None:
    tok = train_tokenizer(["def f(x): return x"] * 10, 300)
    ex = Example(
        "a~fim",
        "d",
        "x",
        meta={"fim": {"prefix": "a", "middle": "b", "suffix": "c", "mode": "psm", "convention": "auto"}},
    )
    with pytest.raises(CodetuneError, match="no such FIM tokens.*data.fim.rate=0"):
        encode_examples([ex], tiny_cfg, tok, "causal")
    with pytest.raises(CodetuneError, match="data.fim.convention 'bogus'"):
        fim_examples([ex], 1.0, 0.5, "bogus", 0)


def test_prepare_writes_fim_samples_to_train_and_a_fim_model_trains_on_them(tmp_path: Path) -> None:
    rows = make_pairs()
    for r in rows:
        r["code"] = r["code"].replace("return", "result =") + "    return result\n"
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    # a tiny causal model whose tokenizer has StarCoder's FIM tokens, saved as a model folder
    tok = train_tokenizer([r["docstring"] for r in rows] + [r["code"] for r in rows], 300)
    tok.add_tokens([STAR.prefix, STAR.suffix, STAR.middle], special_tokens=True)
    sizes = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model_dir = tmp_path / "fim-model"
    build_tiny_model("tiny", tok, sizes, None).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cfg = tiny_config(
        tmp_path,
        src,
        data={"fim": {"rate": 0.5, "spm_rate": 0.5}},
        model={"name": str(model_dir), "kind": "causal"},
        train={"max_steps": 2, "eval_every": 0, "save_every": 0},
    )
    out = prepare(cfg)
    train_rows = read_jsonl(out / "train.jsonl")
    fims = [r for r in train_rows if "fim" in r["meta"]]
    assert fims and not any(
        "fim" in r["meta"] for s in ("valid", "test") for r in read_jsonl(out / f"{s}.jsonl")
    )
    for r in fims:
        f = r["meta"]["fim"]
        assert f["prefix"] + f["middle"] + f["suffix"] == r["code"] and f["middle"]
        assert r["meta"]["augmented"] == {"origin": r["id"].removesuffix("~fim"), "kind": "fim"}
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["added"] == {"fim": len(fims)}
    assert m["augmentation"]["fim"]["spm"] == sum(r["meta"]["fim"]["mode"] == "spm" for r in fims)
    run = train(cfg)
    losses = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
