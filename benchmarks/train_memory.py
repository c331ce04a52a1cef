"""Peak resident memory of `codetune train` on Qwen2.5-Coder-0.5B (fp32, CPU): where it goes, phase by
phase, for LoRA and full fine-tuning, with and without gradient checkpointing.

    python benchmarks/train_memory.py                       # the quickstart's data and settings, 3 steps
    python benchmarks/train_memory.py --modes lora,full --steps 2

Each mode trains in a fresh process that reports its resident set (VmRSS) and peak (VmHWM) after loading,
after each step and at the end; the weights alone are the anchor (2.0 GB for 494 M fp32 parameters).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNNER = r"""
import json, sys, time
import torch
from codetune.config import load_config
from codetune.training import loop

def mem():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "VmHWM")))
    return {k: int(v.split()[0]) / 2**20 for k, v in fields.items()}  # GiB

marks = []
def mark(name):
    marks.append({"at": name, **mem()})
    print(json.dumps(marks[-1]), file=sys.stderr, flush=True)

load = loop.load_for_training
def load_and_mark(*args, **kwargs):
    out = load(*args, **kwargs)
    mark("model loaded")
    return out
loop.load_for_training = load_and_mark
cfg = load_config(sys.argv[1], sys.argv[3:])
loop.train(cfg, on_step=lambda step, loss: mark(f"step {step}"))
mark("end")
json.dump(marks, open(sys.argv[2], "w"))
"""

MODES = {
    "lora": ["--train.lora.enabled=true"],
    "lora+ckpt": ["--train.lora.enabled=true", "--train.gradient_checkpointing=true"],
    "full": ["--train.lora.enabled=false"],
    "full+ckpt": ["--train.lora.enabled=false", "--train.gradient_checkpointing=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--modes", default="lora,lora+ckpt,full,full+ckpt")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/train-memory"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if not (data / "train.jsonl").is_file():
        subprocess.run(
            [sys.executable, "-m", "codetune", "prepare", args.config, f"--data.output_dir={data}"],
            check=True,
        )
    runner = args.out / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    results = {}
    for mode in args.modes.split(","):
        marks = args.out / f"{mode}.json"
        shutil.rmtree(args.out / f"train-{mode}", ignore_errors=True)  # this benchmark's own earlier run
        overrides = [
            f"--train.data_dir={data}",
            f"--train.output_dir={args.out / ('train-' + mode)}",
            f"--train.max_steps={args.steps}",
            "--train.eval_every=0",
            "--train.save_every=0",
            "--train.max_valid_examples=4",
            "--train.tensorboard=false",
            *MODES[mode],
        ]
        started = time.perf_counter()
        subprocess.run([sys.executable, str(runner), args.config, str(marks), *overrides], check=True)
        rows = json.loads(marks.read_text())
        results[mode] = {"seconds": round(time.perf_counter() - started, 1), "marks": rows}
        peak = max(r["VmHWM"] for r in rows)
        loaded = next(r["VmRSS"] for r in rows if r["at"] == "model loaded")
        print(
            f"{mode:>10}: peak RSS {peak:.2f} GiB; after loading {loaded:.2f} GiB; {results[mode]['seconds']} s"
        )
    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
