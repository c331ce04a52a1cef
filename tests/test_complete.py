"""`codetune complete FILE:LINE[:COL]`: the split at the cursor, the context budget, the FIM prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from codetune.complete import Cursor, complete, fit_context, parse_location, split_at
from codetune.config import Config
from codetune.errors import CodetuneError
from codetune.models.backends.base import Completion
from codetune.models.fim import FIM_CONVENTIONS

CODE = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
INFILL = "    # the sum\n"


@pytest.mark.parametrize(
    ("line", "col", "prefix_end"),
    [
        (2, 5, "def add(a, b):\n    "),  # in the middle of a line
        (1, None, "def add(a, b):"),  # no column: the end of the line
        (2, 17, "def add(a, b):\n    return a + b"),  # the last column: the line's end
        (5, 1, "def add(a, b):\n    return a + b\n\n\n"),  # the start of the last line
        (6, 1, CODE),  # the end of the file (the line after its final newline)
    ],
)
def test_prefix_infill_suffix_reassembles_the_file(line, col, prefix_end):
    prefix, suffix = split_at(CODE, Cursor(Path("f.py"), line, col))
    assert prefix == prefix_end
    assert prefix + suffix == CODE
    assert prefix + INFILL + suffix == CODE[: len(prefix)] + INFILL + CODE[len(prefix) :]


def test_a_file_without_final_newline_ends_on_its_last_line():
    text = "x = 1\ny = 2"
    prefix, suffix = split_at(text, Cursor(Path("f.py"), 2, None))
    assert (prefix, suffix) == (text, "")
    with pytest.raises(CodetuneError, match="line 3 is outside the file"):
        split_at(text, Cursor(Path("f.py"), 3, 1))


@pytest.mark.parametrize(
    ("line", "col", "message"),
    [
        (7, 1, r"f.py:7:1: line 7 is outside the file \(6 lines"),
        (0, None, "line 0 is outside the file"),
        (2, 18, "column 18 is outside line 2, which has 16 characters"),
        (2, 0, "column 0 is outside line 2"),
    ],
)
def test_past_the_file_or_the_line_is_a_clear_error(line, col, message):
    with pytest.raises(CodetuneError, match=message):
        split_at(CODE, Cursor(Path("f.py"), line, col))


def test_parse_location():
    assert parse_location("src/a.py:12") == Cursor(Path("src/a.py"), 12, None)
    assert parse_location("src/a.py:12:4") == Cursor(Path("src/a.py"), 12, 4)
    assert parse_location("C:/x/a.py:3:1") == Cursor(Path("C:/x/a.py"), 3, 1)
    with pytest.raises(CodetuneError, match="FILE:LINE"):
        parse_location("src/a.py")


def _words(text: str) -> int:
    return len(text.split())


def test_fit_context_cuts_far_lines_from_both_sides_symmetrically():
    prefix = "".join(f"p{i} p{i}\n" for i in range(10)) + "cur"
    suffix = "sor\n" + "".join(f"s{i} s{i}\n" for i in range(10))
    whole = fit_context(prefix, suffix, 100, _words)
    assert (whole.prefix, whole.suffix, whole.note()) == (prefix, suffix, None)
    fitted = fit_context(prefix, suffix, 10, _words)
    assert fitted.prefix == "p8 p8\np9 p9\ncur"  # the nearest lines are kept
    assert fitted.suffix == "sor\ns0 s0\ns1 s1\n"
    assert (fitted.cut_prefix_lines, fitted.cut_suffix_lines) == (8, 8)
    assert fitted.tokens <= 10
    assert "cut 8 line(s) from the start and 8 from the end" in (fitted.note() or "")
    assert prefix.endswith(fitted.prefix) and suffix.startswith(fitted.suffix)


def test_fit_context_gives_a_short_side_s_room_to_the_other():
    prefix = "".join(f"p{i}\n" for i in range(20))
    fitted = fit_context(prefix, "", 5, _words)
    assert fitted.prefix == "p15\np16\np17\np18\np19\n" and fitted.cut_suffix_lines == 0


def test_fit_context_refuses_when_the_cursor_line_alone_is_too_long():
    with pytest.raises(CodetuneError, match="raise --context-tokens"):
        fit_context("a b c d", "e f g", 3, _words)


class FakeFimBackend:
    """A backend with Qwen2.5-Coder's FIM tokens that records its prompts and answers INFILL."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.stops: tuple[str, ...] = ()

    def fim_tokens(self):
        return FIM_CONVENTIONS["qwen2.5-coder"]

    def count_tokens(self, text: str) -> int:
        return _words(text)

    def chat_prompt(self, messages):
        return messages[-1]["content"]

    def generate(self, prompts, settings):
        self.prompts.extend(prompts)
        self.stops = settings.stop
        return [[Completion(INFILL, "stop", 1, 1)] for _ in prompts]


def test_complete_builds_the_fim_prompt_with_neighbouring_files(tmp_path):
    path = tmp_path / "add.py"
    path.write_text(CODE, encoding="utf-8")
    helper = tmp_path / "helper.py"
    helper.write_text("def sub(a, b):\n    return a - b\n", encoding="utf-8")
    backend = FakeFimBackend()
    cfg = Config()
    infill = complete(Cursor(path, 2, 1), cfg, neighbours=[helper], backend=backend)  # type: ignore[arg-type]
    assert infill.prefix + infill.completions[0].text + infill.suffix == CODE.replace(
        "    return", INFILL + "    return"
    )
    assert backend.prompts == [
        f"<|file_sep|>{helper}\ndef sub(a, b):\n    return a - b\n<|file_sep|>add.py\n"
        "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>    return a + b\n\n\nprint(add(1, 2))\n<|fim_middle|>"
    ]
    assert "<|endoftext|>" in backend.stops and "<|file_sep|>" in backend.stops
    assert infill.fitted.neighbours == [str(helper)]


def test_complete_cuts_context_and_leaves_out_neighbours_that_do_not_fit(tmp_path):
    path = tmp_path / "long.py"
    path.write_text("".join(f"x{i} = {i}\n" for i in range(50)), encoding="utf-8")
    helper = tmp_path / "big.py"
    helper.write_text("y = 1\n" * 100, encoding="utf-8")
    infill = complete(
        Cursor(path, 25, 1), Config(), context_tokens=30, neighbours=[helper], backend=FakeFimBackend()
    )  # type: ignore[arg-type]
    assert infill.fitted.cut_prefix_lines > 0 and infill.fitted.cut_suffix_lines > 0
    assert infill.fitted.left_out == [str(helper)]
    assert "left out neighbouring file(s)" in (infill.fitted.note() or "")
    assert "x24 = 24" in infill.prompt and "x0 = 0" not in infill.prompt


def test_cli_names_a_place_outside_the_file_without_loading_a_model(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "add.py"
    path.write_text(CODE, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "codetune", "complete", f"{path}:9:1", "-m", "no-such-model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "line 9 is outside the file (6 lines" in done.stderr
    assert "Traceback" not in done.stderr
