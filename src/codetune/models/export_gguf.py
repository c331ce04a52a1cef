"""Export any tuned causal model (full, LoRA adapter or checkpoint) to GGUF for llama.cpp and Ollama.

Nothing here converts tensors by hand: the model is merged (`models.merge`) into a plain transformers
folder, llama.cpp's own `convert_hf_to_gguf.py` writes the f16 (or q8_0) GGUF, and llama.cpp's own
`llama_model_quantize` (bound by llama-cpp-python) makes q4_k_m from it.

Where the converter comes from: the converter is not on PyPI as a package (the `gguf` package there is
only its writer library, and an older one than the converter needs), so codetune takes it from the
source distribution of the llama-cpp-python version it pins (0.3.36, whose build is the llamacpp backend):
`pip download` fetches the sdist once (through the user's own pip settings and index), its sha256 is
checked against the pin below, and `vendor/llama.cpp/{convert_hf_to_gguf.py, conversion/, gguf-py/,
LICENSE}` (2 MB) are extracted to `~/.cache/codetune/llama.cpp-convert/0.3.36/`. The converter runs as
a subprocess on this Python, with its own gguf-py first on its path. `CODETUNE_LLAMACPP_SDIST=<tar.gz>`
names an sdist already on disk (offline machines); its sha256 is checked the same way. Beyond codetune's
own dependencies the converter needs `sentencepiece` (the `export` extra).

Beside the GGUF goes an Ollama `Modelfile` whose TEMPLATE is the prompt the model was trained with: the
codetune prompt template inside the model's chat template (rendered with sentinels and turned into
Ollama's Go template), or the plain template; its stops are the chat template's special tokens and EOS.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from codetune import progress
from codetune.config import PromptConfig
from codetune.errors import CodetuneError
from codetune.manifest import atomic_folder

LLAMACPP_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMACPP_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_VENDOR = f"llama_cpp_python-{LLAMACPP_VERSION}/vendor/llama.cpp/"
_WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
CONVERTER = "convert_hf_to_gguf.py"
QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
MODELFILE = "Modelfile"


def converter_dir(cache_dir: Path | None = None) -> Path:
    """The folder holding llama.cpp's converter (fetched and extracted on first use)."""
    from codetune.models.pack import default_cache_dir

    folder = (cache_dir or default_cache_dir()) / "llama.cpp-convert" / LLAMACPP_VERSION
    if (folder / CONVERTER).is_file() and (folder / "sdist.sha256").is_file():
        return folder
    sdist = os.environ.get("CODETUNE_LLAMACPP_SDIST")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(sdist) if sdist else _download_sdist(Path(tmp))
        _extract_converter(path, folder)
    return folder


def _download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest)]
    with progress.task(
        f"export: fetch llama.cpp's converter (the llama-cpp-python {LLAMACPP_VERSION} sdist)"
    ):
        done = subprocess.run([*cmd, f"llama-cpp-python=={LLAMACPP_VERSION}"], capture_output=True, text=True)
    path = dest / SDIST_NAME
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise CodetuneError(
            f"could not download llama-cpp-python=={LLAMACPP_VERSION}'s source (it holds llama.cpp's GGUF "
            f"converter): {' / '.join(tail)}. On a machine without the index, download {SDIST_NAME} "
            "elsewhere and set CODETUNE_LLAMACPP_SDIST to its path"
        )
    return path


def _extract_converter(sdist: Path, folder: Path) -> None:
    if not sdist.is_file():
        raise CodetuneError(f"CODETUNE_LLAMACPP_SDIST={sdist}: no such file")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise CodetuneError(
            f"{sdist}: sha256 {digest} is not the pinned llama-cpp-python {LLAMACPP_VERSION} sdist's "
            f"({SDIST_SHA256}); remove it and let codetune fetch it again"
        )
    with atomic_folder(folder) as tmp:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name[len(_VENDOR) :] if m.name.startswith(_VENDOR) else None
                if rel and any(rel == w or rel.startswith(w) for w in _WANTED) and (m.isfile() or m.isdir()):
                    m.name = rel
                    members.append(m)
            tar.extractall(tmp, members=members, filter="data")
        if not (tmp / CONVERTER).is_file():
            raise CodetuneError(f"{sdist}: has no vendor/llama.cpp/{CONVERTER}")
        (tmp / "sdist.sha256").write_text(digest + "\n")


def convert_hf_to_gguf(
    hf_folder: Path, out: Path, outtype: str = "f16", cache_dir: Path | None = None
) -> Path:
    """Run llama.cpp's `convert_hf_to_gguf.py` on a transformers folder; `outtype` f16, f32, bf16 or q8_0."""
    script = converter_dir(cache_dir) / CONVERTER
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py, not ours
    cmd = [sys.executable, str(script), str(hf_folder), "--outfile", str(out), "--outtype", outtype]
    with tempfile.TemporaryFile("w+") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
        if done.returncode == 0 and out.is_file():
            return out
        log.seek(0)
        lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    if any("BPE pre-tokenizer was not recognized" in line for line in lines):
        raise CodetuneError(
            f"{hf_folder}: llama.cpp does not know this model's tokenizer (its BPE pre-tokenizer hash is not "
            "in convert_hf_to_gguf.py), so it cannot be written as GGUF; models tuned from a base llama.cpp "
            "supports (Qwen2.5, SmolLM2, Llama, ...) keep that base's tokenizer and convert"
        )
    raise CodetuneError(f"llama.cpp's converter failed on {hf_folder}: {' / '.join(lines[-4:])}")


def quantize_gguf(src: Path, out: Path, quant: str) -> Path:
    """llama.cpp's `llama_model_quantize` from an f16/f32 GGUF to `quant` (q4_k_m or q8_0)."""
    try:
        import llama_cpp
    except ImportError as e:
        raise CodetuneError(
            f"--quant {quant} uses llama.cpp's quantizer from llama-cpp-python: install it with "
            "`make llamacpp` (or use --quant f16 / q8_0, which need only the converter)"
        ) from e
    ftypes = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quant]
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise CodetuneError(
            f"llama.cpp could not quantize {src} to {quant} (llama_model_quantize returned {rc})"
        )
    return out


def export_gguf(folder: Path, out: Path, quant: str = "q4_k_m", cache_dir: Path | None = None) -> Path:
    """Write `out` (a .gguf file) from a tuned causal model folder, merged first, and an Ollama Modelfile
    beside it. Returns the GGUF's path."""
    from codetune.models.loading import read_meta
    from codetune.models.merge import merge_model

    if quant not in QUANTS:
        raise CodetuneError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    if read_meta(folder).get("kind", "causal") != "causal":
        raise CodetuneError(f"{folder}: a seq2seq model; llama.cpp's GGUF export is for causal models")
    out.parent.mkdir(parents=True, exist_ok=True)
    converter_dir(cache_dir)  # fetched (once) before the merge, so a missing converter fails fast
    direct = quant != "q4_k_m"  # the converter writes f32/f16/q8_0 itself; q4_k_m is quantized from f16
    with (
        tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp,
        progress.task(f"export: {folder} -> {out.name}", total=3 if direct else 4, unit="steps") as bar,
    ):
        merged = merge_model(folder, Path(tmp) / "merged")
        bar.advance(step="merged")
        f16 = Path(tmp) / "f16.gguf"
        convert_hf_to_gguf(merged, out if direct else f16, quant if direct else "f16", cache_dir)
        bar.advance(step=f"converted to {quant if direct else 'f16'}")
        if not direct:
            quantize_gguf(f16, out, quant)
            bar.advance(step=f"quantized to {quant}")
        write_modelfile(out, merged)
        bar.advance(step="Modelfile")
    return out


def write_modelfile(gguf_path: Path, hf_folder: Path) -> Path:
    """An Ollama Modelfile beside `gguf_path`, prompting as the model in `hf_folder` was trained."""
    from codetune.models.loading import load_tokenizer, prompt_config_of, read_meta

    tok = load_tokenizer(str(hf_folder))
    prompt = prompt_config_of(read_meta(hf_folder), PromptConfig())
    text = ollama_modelfile(
        gguf_path.name, prompt, getattr(tok, "chat_template", None), _special_tokens(tok), tok.eos_token
    )
    path = gguf_path.with_name(MODELFILE)
    path.write_text(text, encoding="utf-8")
    return path


def _special_tokens(tok: Any) -> list[str]:
    added = getattr(tok, "added_tokens_decoder", {}) or {}
    return sorted(
        {str(t) for t in tok.all_special_tokens}
        | {str(t) for t in added.values() if getattr(t, "special", False)}
    )


SYS, USER, ANSWER = "\x00SYSTEM\x00", "\x00PROMPT\x00", "\x00ANSWER\x00"


def ollama_template(
    prompt: PromptConfig, chat_template: str | None, special: list[str]
) -> tuple[str, list[str]]:
    """Ollama's Go TEMPLATE for what the model was trained on, and the special tokens it shows (stops).

    Chat style: the chat template is rendered with sentinel system/user/answer texts (with and without a
    system message, since templates like Qwen2.5's and SmolLM2's put in a default one), and the sentinels
    become `{{ .System }}`, `{{ .Prompt }}` (inside codetune's prompt template) and `{{ .Response }}`.
    """
    if prompt.style == "plain":
        return _go_literal(prompt.template.format(nl=USER)).replace(
            USER, "{{ .Prompt }}"
        ) + "{{ .Response }}", []
    if not chat_template:
        raise CodetuneError("prompt.style is 'chat' but the model's tokenizer has no chat template")
    from transformers.utils.chat_template_utils import render_jinja_template

    user = {"role": "user", "content": prompt.template.format(nl=USER)}
    system = {"role": "system", "content": SYS}

    def render(messages: list[dict[str, str]], generation: bool) -> str:
        rendered = render_jinja_template(
            conversations=[messages], chat_template=chat_template, add_generation_prompt=generation
        )[0]  # (rendered conversations, generation indices)
        return str(rendered[0])

    with_system = render([system, user], True)
    without = render([user], True)
    answered = render([system, user, {"role": "assistant", "content": ANSWER}], False)
    if SYS not in with_system:
        raise CodetuneError(
            "the model's chat template drops the system message; cannot write an Ollama template"
        )
    head, sep, closing = answered.partition(ANSWER)
    if not sep or head != with_system:
        raise CodetuneError(
            "the model's chat template does not render an answer right after its generation prompt; "
            "cannot write an Ollama template"
        )

    def go(text: str) -> str:
        return _go_literal(text).replace(SYS, "{{ .System }}").replace(USER, "{{ .Prompt }}")

    template = (
        "{{ if .System }}"
        + go(with_system)
        + "{{ else }}"
        + go(without)
        + "{{ end }}{{ .Response }}"
        + go(closing)
    )
    shown = [t for t in special if t and t in answered]
    return template, shown


def _go_literal(text: str) -> str:
    """`text` as literal Go-template text (only `{{` starts an action there)."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_modelfile(
    gguf_name: str, prompt: PromptConfig, chat_template: str | None, special: list[str], eos: str | None
) -> str:
    """The Modelfile text: FROM the GGUF beside it, TEMPLATE, SYSTEM (if trained with one), stops."""
    template, shown = ollama_template(prompt, chat_template, special)
    stops = list(dict.fromkeys([*shown, *([eos] if eos else [])]))
    for text in (template, prompt.system or ""):
        if '"""' in text:
            raise CodetuneError('the prompt contains """, which an Ollama Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if prompt.system:
        lines.append(f'SYSTEM """{prompt.system}"""')
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
