from codetune.config import PromptConfig
from codetune.data.format import (
    IGNORE_INDEX,
    Encoded,
    audit_lengths,
    build_answer,
    build_prompt,
    encode_causal,
)
from codetune.models.tiny import train_tokenizer


def _tok():
    return train_tokenizer(["def f(x):\n    return x + 1\n", "Return the sum.", "### Instruction:"] * 20, 300)


def test_prompt_and_answer_templates() -> None:
    p = PromptConfig(template="# {nl}\n", answer_template="```python\n{code}\n```")
    assert build_prompt("Add two numbers.", p) == "# Add two numbers.\n"
    assert build_answer("x = 1", p) == "```python\nx = 1\n```"
    chat = PromptConfig(style="chat", template="Write: {nl}", system="Be brief.")
    rendered = build_prompt("sum", chat, lambda msgs: "|".join(f"{m['role']}:{m['content']}" for m in msgs))
    assert rendered == "system:Be brief.|user:Write: sum"


def test_labels_mask_the_prompt_and_end_with_eos() -> None:
    tok = _tok()
    e = encode_causal("1", "Return the sum.\n", "def f(x):\n    return x + 1", tok)
    n_prompt = len(tok("Return the sum.\n")["input_ids"])
    assert e.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert e.labels[n_prompt:] == e.input_ids[n_prompt:]
    assert e.input_ids[-1] == tok.eos_token_id
    assert tok.decode(e.input_ids[n_prompt:-1]) == "def f(x):\n    return x + 1"


def test_length_audit_counts_a_planted_over_long_example() -> None:
    items = [Encoded(str(i), list(range(10)), [IGNORE_INDEX] * 4 + list(range(4, 10))) for i in range(5)]
    items.append(Encoded("long", list(range(50)), [IGNORE_INDEX] * 4 + list(range(4, 50))))
    kept, audit = audit_lengths(items, "causal", 16, 16, "drop")
    assert [e.id for e in kept] == ["0", "1", "2", "3", "4"]
    assert (audit.total, audit.over_limit, audit.tokens_over, audit.dropped, audit.truncated) == (
        6,
        1,
        34,
        1,
        0,
    )
    assert audit.over_ids == ["long"] and audit.longest == 50
    kept, audit = audit_lengths(items, "causal", 16, 16, "truncate")
    assert len(kept) == 6 and audit.truncated == 1 and audit.dropped == 0
    long = kept[-1]
    assert long.input_ids == list(range(16)) and long.labels[:4] == [IGNORE_INDEX] * 4


def test_truncate_never_keeps_an_example_whose_prompt_does_not_fit() -> None:
    e = Encoded("p", list(range(30)), [IGNORE_INDEX] * 20 + list(range(20, 30)))
    kept, audit = audit_lengths([e], "causal", 16, 16, "truncate")
    assert kept == [] and audit.dropped == 1


def test_seq2seq_audit_checks_both_sides() -> None:
    e = Encoded("s", list(range(8)), list(range(40)))
    kept, audit = audit_lengths([e], "seq2seq", 16, 32, "drop")
    assert kept == [] and audit.tokens_over == 8
