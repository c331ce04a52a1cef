"""Length report at prepare time: token lengths of prompts and completions under a tokenizer, and what
each length policy that `train.length_policy` offers would cost at a limit (causal: prompt + completion +
end token <= max_length).

- drop: over-long examples are left out (all their tokens are lost);
- truncate: the completion's tail is cut (an example whose prompt alone doesn't fit is still dropped).

Only the policies training can apply are priced (`POLICIES`, the values of `train.length_policy`). A
"split" into statement pieces each trained right after the prompt is not offered: a piece from the middle
of a function would teach the model to begin its answer mid-function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args, get_type_hints

import numpy as np

from codetune.config import Config, TrainConfig
from codetune.data.format import build_answer, build_prompt, chat_renderer
from codetune.data.records import Example

BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)
POLICIES: tuple[str, ...] = get_args(get_type_hints(TrainConfig)["length_policy"])


def distribution(lengths: Sequence[int]) -> dict[str, Any]:
    """count, mean, min, p50/p90/p95/p99, max of a list of lengths."""
    if not lengths:
        return {"count": 0}
    a = np.asarray(lengths)
    out: dict[str, Any] = {"count": int(a.size), "mean": round(float(a.mean()), 1), "min": int(a.min())}
    for q in (50, 90, 95, 99):
        out[f"p{q}"] = int(np.percentile(a, q, method="nearest"))
    out["max"] = int(a.max())
    return out


def histogram(lengths: Sequence[int]) -> dict[str, int]:
    """How many lengths fall at or below each bucket edge (and above the last)."""
    out: dict[str, int] = {}
    lo = 0
    for edge in BUCKETS:
        out[f"{lo + 1}-{edge}"] = sum(1 for n in lengths if lo < n <= edge)
        lo = edge
    out[f">{BUCKETS[-1]}"] = sum(1 for n in lengths if n > BUCKETS[-1])
    return out


def policy_costs(
    prompt_lens: Sequence[int],
    answer_lens: Sequence[int],
    max_length: int,
) -> dict[str, Any]:
    """What each offered policy (drop, truncate) costs at `max_length`."""
    total = [p + a for p, a in zip(prompt_lens, answer_lens, strict=True)]
    over = [i for i, t in enumerate(total) if t > max_length]
    all_tokens = sum(total)
    drop_tokens = sum(total[i] for i in over)
    trunc_dropped = [i for i in over if prompt_lens[i] >= max_length]
    trunc_cut = [i for i in over if prompt_lens[i] < max_length]
    return {
        "max_length": max_length,
        "examples": len(total),
        "over_limit": len(over),
        "drop": {
            "examples_dropped": len(over),
            "tokens_lost": drop_tokens,
            "share_of_tokens": _share(drop_tokens, all_tokens),
        },
        "truncate": {
            "examples_truncated": len(trunc_cut),
            "tokens_cut": sum(total[i] - max_length for i in trunc_cut),
            "examples_dropped": len(trunc_dropped),
            "tokens_lost": sum(total[i] for i in trunc_dropped),
        },
    }


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def load_report_tokenizer(name: str, cfg: Config, texts: list[str]) -> Any:
    """`tiny`: the BPE tokenizer the tiny preset would train on these texts; else a model's tokenizer."""
    if name in ("tiny", "tiny-t5"):
        from codetune.models.tiny import train_tokenizer

        return train_tokenizer(texts, cfg.model.tiny.vocab_size)
    from codetune.models.loading import load_tokenizer, quiet_transformers, resolve_source

    quiet_transformers()
    return load_tokenizer(resolve_source(name))


def length_report(splits: dict[str, list[Example]], cfg: Config, tokenizer: Any) -> dict[str, Any]:
    """Per split: distributions of prompt / completion / total tokens, a histogram, policy costs."""
    render = chat_renderer(tokenizer)
    max_length = cfg.data.length_report.max_length or cfg.train.max_length
    report: dict[str, Any] = {"max_length": max_length, "splits": {}}
    for name, examples in splits.items():
        plain = [e for e in examples if "fim" not in e.meta]
        if not plain:
            continue
        prompts = [build_prompt(e.nl, cfg.prompt, render) for e in plain]
        answers = [build_answer(e.code, cfg.prompt) for e in plain]
        p_lens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        a_lens = [len(ids) + 1 for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]]
        totals = [p + a for p, a in zip(p_lens, a_lens, strict=True)]
        report["splits"][name] = {
            "prompt_tokens": distribution(p_lens),
            "completion_tokens": distribution(a_lens),
            "total_tokens": distribution(totals),
            "histogram_total": histogram(totals),
            "policies": policy_costs(p_lens, a_lens, max_length),
            "fim_samples_not_measured": len(examples) - len(plain),
        }
    return report
