"""Translation as a task type: prompts (causal, seq2seq), paired training data for `prepare`, and
`codetune translate FILE --to LANG` (the stage function, with a scripted backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codetune.config import Config, PromptConfig, load_config
from codetune.data.format import build_example_prompt, translation_instruction
from codetune.data.prepare import prepare
from codetune.data.translation import pair_files
from codetune.errors import CodetuneError
from codetune.models.backends.base import Completion
from codetune.translate import extract_translation, language_of, translate

PY = "def add(a, b):\n    return a + b\n"
JS = "function add(a, b) {\n  return a + b;\n}\n"


def test_translation_prompts_for_causal_and_seq2seq_models():
    assert translation_instruction(PY, "python", "javascript") == (
        "Translate this Python code to JavaScript, keeping the function names.\n"
        "```python\ndef add(a, b):\n    return a + b\n```"
    )
    assert translation_instruction(JS, "javascript", "python", "seq2seq") == (
        "translate JavaScript to Python: function add(a, b) {\n  return a + b;\n}"
    )
    with pytest.raises(CodetuneError, match="causal and seq2seq"):
        translation_instruction(PY, "python", "javascript", "encoder")


def test_a_prepared_pair_prompts_each_model_kind_its_own_way():
    pair = {"source_language": "python", "target_language": "javascript", "source_code": PY}
    nl = translation_instruction(PY, "python", "javascript")
    plain = PromptConfig()
    causal = build_example_prompt(nl, {"translation": pair}, "causal", plain)
    assert causal == f"### Instruction:\n{nl}\n### Response:\n"
    seq2seq = build_example_prompt(nl, {"translation": pair}, "seq2seq", plain)
    assert seq2seq == "translate Python to JavaScript: def add(a, b):\n    return a + b"
    assert build_example_prompt("Add two numbers.", {}, "seq2seq", plain).startswith("### Instruction:")


def _pairs_folder(root: Path, n: int = 12) -> Path:
    for i in range(n):
        sub = root / f"pkg{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"op{i}.py").write_text(f"def op{i}(a, b):\n    return a + b * {i}\n", encoding="utf-8")
        (sub / f"op{i}.js").write_text(
            f"function op{i}(a, b) {{\n  return a + b * {i};\n}}\n", encoding="utf-8"
        )
    (root / "pkg0" / "lonely.py").write_text("x = 1\n", encoding="utf-8")
    return root


def test_pair_files_by_name_and_count_the_unpaired(tmp_path):
    folder = _pairs_folder(tmp_path / "src")
    pairs, unpaired = pair_files(folder, "python", "javascript")
    assert len(pairs) == 12
    assert all(p.with_suffix("") == j.with_suffix("") for p, j in pairs)
    assert [u.name for u in unpaired] == ["lonely.py"]


def _prepare_cfg(tmp_path: Path, source: dict) -> Config:
    return load_config(
        None,
        {
            "data": {
                "sources": [source],
                "output_dir": str(tmp_path / "data"),
                "splits": {"train": 0.5, "valid": 0.25, "test": 0.25},
            }
        },
    )


def _read_splits(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for split in ("train", "valid", "test")
        for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def test_prepare_reads_a_folder_of_paired_files(tmp_path):
    folder = _pairs_folder(tmp_path / "src")
    cfg = _prepare_cfg(
        tmp_path,
        {"kind": "translation", "path": str(folder), "source_language": "python", "language": "javascript"},
    )
    out = prepare(cfg)
    rows = _read_splits(out)
    assert len(rows) == 12
    row = next(r for r in rows if r["id"] == "pkg1/op4")
    assert row["language"] == "javascript" and row["code"].startswith("function op4(a, b)")
    assert row["meta"]["translation"] == {
        "source_language": "python",
        "target_language": "javascript",
        "source_code": "def op4(a, b):\n    return a + b * 4\n",
    }
    assert row["nl"].startswith("Translate this Python code to JavaScript")
    (source,) = json.loads((out / "manifest.json").read_text())["inputs"]
    assert (source["pairs"], source["unpaired_files"], source["unpaired"]) == (12, 1, ["pkg0/lonely.py"])


def test_prepare_reads_a_file_with_source_and_target_fields(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"source": f"function f{i}(x) {{ return x * {i}; }}", "target": f"def f{i}(x):\n    return x * {i}\n"}
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = _prepare_cfg(
        tmp_path,
        {"kind": "translation", "path": str(path), "source_language": "javascript", "language": "python"},
    )
    out = prepare(cfg)
    got = _read_splits(out)
    assert len(got) == 8
    assert all(r["meta"]["translation"]["source_language"] == "javascript" for r in got)
    assert all(r["nl"].startswith("Translate this JavaScript code to Python") for r in got)


def test_a_translation_source_names_a_bad_language_or_a_missing_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"source": "x = 1"}) + "\n", encoding="utf-8")
    with pytest.raises(CodetuneError, match="'cobol'"):
        prepare(
            _prepare_cfg(tmp_path, {"kind": "translation", "path": str(path), "source_language": "cobol"})
        )
    with pytest.raises(CodetuneError, match="pairs.jsonl:1"):
        prepare(_prepare_cfg(tmp_path, {"kind": "translation", "path": str(path), "language": "javascript"}))


class ScriptedBackend:
    def __init__(self, reply: str) -> None:
        self.reply, self.prompts, self.stops = reply, [], ()

    def chat_prompt(self, messages):
        return "<chat>" + messages[-1]["content"] + "</chat>"

    def generate(self, prompts, settings):
        self.prompts.extend(prompts)
        self.stops = settings.stop
        return [[Completion(self.reply, "stop", 1, 1)] for _ in prompts]


def test_translate_a_file_with_a_chat_model(tmp_path):
    path = tmp_path / "add.py"
    path.write_text(PY, encoding="utf-8")
    backend = ScriptedBackend(JS + "```\nThis adds.")
    cfg = load_config(None, {"prompt": {"style": "chat", "template": "{nl}"}})
    out = translate(path, "javascript", cfg, backend=backend)  # type: ignore[arg-type]
    assert [c.text for c in out] == [JS]
    assert backend.prompts == [
        "<chat>" + translation_instruction(PY, "python", "javascript") + "</chat>```javascript\n"
    ]
    assert "\n```" in backend.stops


def test_translate_a_file_with_a_plain_prompt_takes_the_fenced_code(tmp_path):
    path = tmp_path / "add.js"
    path.write_text(JS, encoding="utf-8")
    backend = ScriptedBackend("Sure:\n```python\n" + PY + "```\n")
    out = translate(path, "python", Config(), backend=backend)  # type: ignore[arg-type]
    assert [c.text for c in out] == [PY]
    assert backend.prompts[0].startswith("### Instruction:\nTranslate this JavaScript code to Python")


def test_translate_refuses_what_it_cannot_do(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(CodetuneError, match="pass --from"):
        language_of(path)
    same = tmp_path / "x.py"
    same.write_text(PY, encoding="utf-8")
    with pytest.raises(CodetuneError, match="already python"):
        translate(same, "python", Config())
    with pytest.raises(CodetuneError, match="--to 'cobol'"):
        translate(path, "cobol", Config())


def test_extract_translation():
    assert extract_translation("a\nb\n```\nmore", opened=True) == "a\nb\n"
    assert extract_translation("text\n```js\nx\n```\n", opened=False) == "x\n"
    assert extract_translation("x = 1", opened=False) == "x = 1\n"


class CharTokenizer:
    """One id per character (enough to see which prompt training encodes)."""

    eos_token_id = 0
    bos_token_id = None
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_training_encodes_a_translation_pair_with_the_model_kind_s_prompt():
    from codetune.data.records import Example
    from codetune.data.translation import as_translation
    from codetune.training.batches import encode_examples

    ex = as_translation(Example("p1", "", JS, language="javascript"), "python", PY)
    tok, cfg = CharTokenizer(), Config()
    (seq2seq,) = encode_examples([ex], cfg, tok, "seq2seq")
    assert tok.decode(seq2seq.input_ids) == "translate Python to JavaScript: def add(a, b):\n    return a + b"
    assert tok.decode(seq2seq.labels[:-1]) == JS
    (causal,) = encode_examples([ex], cfg, tok, "causal")
    prompt_len = sum(1 for label in causal.labels if label == -100)
    assert tok.decode(causal.input_ids[:prompt_len]).startswith(
        "### Instruction:\nTranslate this Python code to JavaScript"
    )
