"""Does a model exported with `codetune export --gguf` compute in llama.cpp what it computes in transformers?

    python benchmarks/gguf_agreement.py [--model FOLDER] [--prompts 20] [--tokens 32] [--quants f16 q4_k_m]

The model (default: the smollm2-135m pack's converted folder, a full model; `--lora` adds a random LoRA,
B ~ N(0, 0.02), saved as a codetune adapter folder) is exported per quantisation through
`codetune.models.export_gguf.export_gguf`, then for each of N code prompts (rendered with the model's chat
template) both run greedy decoding from the same token ids:

- sequences equal: the N greedy continuations are identical token for token;
- first divergence: the mean number of tokens before they part (the length when they don't);
- teacher-forced top-1 agreement: at each position of llama.cpp's continuation, transformers' argmax given
  the same context is llama.cpp's token (so one early difference doesn't hide the agreement after it).

All three come from one transformers forward pass per prompt over the prompt + llama.cpp's greedy
continuation: where transformers' argmax agrees at every position, its own greedy decoding would produce
the same tokens, and the first position where it doesn't is where the two greedy decodings part.

Also checked: llama.cpp's tokenizer gives transformers' token ids for every prompt. Writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DESCRIPTIONS = [
    "Return the sum of a list of numbers.",
    "Reverse a string.",
    "Check whether a number is prime.",
    "Return the n-th Fibonacci number.",
    "Count the vowels in a string.",
    "Return the largest element of a list.",
    "Remove duplicates from a list, keeping the order.",
    "Convert Celsius to Fahrenheit.",
    "Check whether a string is a palindrome.",
    "Return the factorial of n.",
    "Flatten a list of lists.",
    "Merge two sorted lists into one sorted list.",
    "Read a CSV file with pandas and return the mean of column 'x'.",
    "Return the words of a sentence sorted by length.",
    "Compute the greatest common divisor of two integers.",
    "Return a dictionary counting each character in a string.",
    "Check whether two strings are anagrams.",
    "Return the second smallest number in a list.",
    "Capitalize the first letter of every word in a string.",
    "Return the indices of the two numbers that add up to a target.",
]


def _cpp_greedy(llm: Any, ids: list[int], steps: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    tokens: list[int] = []
    for _ in range(steps):
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(tokens[-1:])
    return tokens


def _hf_top1(model: Any, ids: list[int], continuation: list[int]) -> tuple[list[int], list[float]]:
    """transformers' argmax before each token of `continuation`, given the prompt and the tokens before it,
    and its margin there (top-1 minus the logit of llama.cpp's token: 0 where they agree)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids + continuation[:-1]])).logits[0, len(ids) - 1 :]  # (T, vocab)
    top = logits.max(-1).values
    theirs = logits.gather(1, torch.tensor(continuation)[:, None])[:, 0]
    return [int(t) for t in logits.argmax(-1)], [float(m) for m in top - theirs]


def _random_lora(model_dir: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from codetune.config import LoraSettings, PromptConfig
    from codetune.models.loading import apply_lora, load_tokenizer, meta_for, write_meta

    lora = LoraSettings(enabled=True, r=8, alpha=16)
    peft_model = apply_lora(AutoModelForCausalLM.from_pretrained(str(model_dir)), lora, "causal")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    peft_model.save_pretrained(str(out))
    load_tokenizer(str(model_dir)).save_pretrained(str(out))
    write_meta(
        out, **meta_for("causal", PromptConfig(style="chat", template="{nl}"), "lora", str(model_dir), lora)
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, help="model folder (default: the smollm2-135m pack's hf folder)"
    )
    parser.add_argument("--lora", action="store_true", help="export a random LoRA on the model instead")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--quants", nargs="+", default=["f16", "q4_k_m"], help="f32 f16 q8_0 q4_k_m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/gguf-agreement.json"))
    args = parser.parse_args()

    import llama_cpp

    from codetune.config import PromptConfig
    from codetune.data.format import build_prompt
    from codetune.models.export_gguf import export_gguf
    from codetune.models.loading import load_for_inference
    from codetune.models.pack import default_cache_dir
    from codetune.training.batches import chat_renderer

    torch.set_num_threads(args.threads)
    model_dir = args.model or default_cache_dir() / "models" / "smollm2-135m" / "hf"
    if not (model_dir / "config.json").is_file():
        sys.exit(f"{model_dir} has no model (codetune models fetch smollm2-135m)")
    results: dict[str, Any] = {
        "model": str(model_dir),
        "lora": args.lora,
        "tokens": args.tokens,
        "quants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = _random_lora(model_dir, Path(tmp) / "adapter") if args.lora else model_dir
        model, tok, _, _ = load_for_inference(str(source))  # LoRA merged by PEFT: the reference
        prompt = PromptConfig(style="chat", template="{nl}")
        prompts = [build_prompt(d, prompt, chat_renderer(tok)) for d in DESCRIPTIONS[: args.prompts]]
        all_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        for quant in args.quants:
            t0 = time.perf_counter()
            path = export_gguf(source, Path(tmp) / quant / f"model-{quant}.gguf", quant)
            export_s = time.perf_counter() - t0
            llm = llama_cpp.Llama(
                str(path), n_ctx=1024, n_threads=args.threads, logits_all=True, verbose=False
            )
            same_ids = sum(
                llm.tokenize(p.encode(), add_bos=False, special=True) == ids
                for p, ids in zip(prompts, all_ids, strict=True)
            )
            equal, parted, agree, margins = 0, [], 0, []
            for ids in all_ids:
                cpp = _cpp_greedy(llm, ids, args.tokens)
                hf, margin = _hf_top1(model, ids, cpp)
                same = [a == b for a, b in zip(cpp, hf, strict=True)]
                margins += [round(m, 4) for m, ok in zip(margin, same, strict=True) if not ok]
                equal += int(all(same))
                parted.append(same.index(False) if not all(same) else len(same))
                agree += sum(same)
            llm.close()
            n = len(all_ids)
            results["quants"][quant] = {
                "gguf_mb": round(path.stat().st_size / 2**20, 1),
                "export_s": round(export_s, 1),
                "sequences_equal": f"{equal}/{n}",
                "mean_tokens_before_divergence": round(float(np.mean(parted)), 1),
                "teacher_forced_top1_agreement": round(agree / (n * args.tokens), 4),
                "tokenizer_ids_equal": f"{same_ids}/{n}",
                # where they differ: how far llama.cpp's token is below transformers' top-1 (logits)
                "logit_gap_where_they_differ": sorted(margins)[:40],
            }
            print(quant, json.dumps(results["quants"][quant]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
