"""Loading trained models: what the user sees on the way."""

from __future__ import annotations

import warnings
from pathlib import Path

from codetune.data.prepare import prepare
from codetune.models.loading import _peft_quietly, load_for_inference
from codetune.training.loop import train
from tests.conftest import make_pairs, tiny_config, write_jsonl


def test_training_and_loading_a_lora_adapter_show_no_deprecation_from_peft(tmp_path: Path) -> None:
    """peft reads transformers' deprecated `is_gradient_checkpointing`; its FutureWarning came up at
    every train, evaluate and generate, with nothing for the user to do about it."""
    source = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(3))
    cfg = tiny_config(tmp_path, source, train={"max_steps": 1, "eval_every": 0, "save_every": 0})
    cfg.train.lora.enabled = True
    prepare(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
        model, _, _, meta = load_for_inference(str(Path(cfg.train.output_dir) / "final"))
    assert meta["format"] == "lora" and model is not None
    deprecated = [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    assert not deprecated, [str(w.message) for w in deprecated]
    # only that message is filtered: other warnings raised while peft works still reach the user
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _peft_quietly():
            warnings.warn("`is_gradient_checkpointing` is deprecated (test)", FutureWarning, stacklevel=1)
            warnings.warn("something else", FutureWarning, stacklevel=1)
            warnings.warn("`is_gradient_checkpointing` is deprecated (test)", UserWarning, stacklevel=1)
    assert sorted(str(w.message) for w in caught) == [
        "`is_gradient_checkpointing` is deprecated (test)",
        "something else",
    ]
