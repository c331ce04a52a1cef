"""Load a model + tokenizer from a preset, a local folder, a model pack or a Hugging Face hub name.

Every model folder codetune writes carries `codetune.json`: the model kind, the prompt settings it was
trained with, and (for LoRA adapters and checkpoints) the base it applies to. Generation reads it, so
a fine-tuned model is always prompted the way it was trained.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch

from codetune.config import LoraSettings, ModelConfig, PromptConfig
from codetune.errors import CodetuneError
from codetune.models.tiny import TINY_PRESETS, build_tiny_model, train_tokenizer

META_FILE = "codetune.json"
TRAINABLE_FILE = "trainable.safetensors"
Kind = Literal["causal", "seq2seq"]


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_meta(folder: Path, **meta: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")))


def resolve_source(name: str) -> str:
    """A folder path stays as is; a model-pack name becomes its converted folder; else a hub name."""
    if Path(name).exists():
        return name
    try:
        from codetune.models import pack
    except ImportError:  # pack module not present
        return name
    if name in getattr(pack, "PACKS", {}):
        fetched = pack.fetch_model(name)
        if fetched.hf_path is None:
            raise CodetuneError(
                f"model pack {name!r} has no transformers conversion; run codetune models fetch {name}"
            )
        return str(fetched.hf_path)
    return name


def _auto_kind(source: str, revision: str | None, trust_remote_code: bool) -> Kind:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise CodetuneError(
            f"model {source!r}: not a local folder, a model pack (codetune models list) or a reachable hub "
            f"name ({str(e).splitlines()[0]})"
        ) from e
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def _set_dropout(model: Any, p: float) -> None:
    for name in (
        "attention_dropout",
        "hidden_dropout",
        "dropout",
        "dropout_rate",
        "resid_pdrop",
        "embd_pdrop",
    ):
        if hasattr(model.config, name):
            setattr(model.config, name, p)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def load_pretrained(
    source: str,
    kind: Kind,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    quantization: dict[str, Any] | None = None,
) -> Any:
    """Weights loaded straight into `dtype`. `attn_implementation` sdpa falls back to eager (with a
    note) for a model that has no SDPA path; flash_attention_2 or eager asked for explicitly must work.
    `quantization`: from_pretrained's quantization_config and device_map (`qlora_load_options`)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    kwargs.update(quantization or {})
    try:
        try:
            return cls.from_pretrained(
                source, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
            )
        except ValueError as e:
            if attn_implementation != "sdpa" or "sdpa" not in str(e).lower():
                raise CodetuneError(
                    f"model {source!r}: attn_implementation={attn_implementation}: {str(e).splitlines()[0]}"
                ) from e
            warnings.warn(f"model {source!r} has no SDPA attention; using eager attention", stacklevel=2)
            return cls.from_pretrained(
                source,
                revision=revision,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                **(quantization or {}),
            )
    except OSError as e:
        raise CodetuneError(f"model {source!r}: cannot load weights ({str(e).splitlines()[0]})") from e


def load_tokenizer(source: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise CodetuneError(f"model {source!r}: cannot load its tokenizer ({str(e).splitlines()[0]})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


WARM_START_PREFIX = "encoder-decoder:"


def build_encoder_decoder(
    encoder: str, revision: str | None = None, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """An `EncoderDecoderModel` warm-started from an encoder-only model (CodeBERT-style RoBERTa, BERT)
    used as both encoder and decoder (the decoder gets causal masking and new cross-attention), and the
    encoder's tokenizer. `AutoModelForSeq2SeqLM` can't load such a model directly; the saved result can.
    """
    from transformers import EncoderDecoderModel

    source = resolve_source(encoder)
    tok = load_tokenizer(source, revision, trust_remote_code)
    if tok.eos_token is None and getattr(tok, "sep_token", None) is not None:
        tok.eos_token = tok.sep_token  # BERT-style tokenizers end a sequence with [SEP]
    start = next((t for t in (tok.cls_token_id, tok.bos_token_id, tok.pad_token_id) if t is not None), None)
    if tok.eos_token_id is None or start is None:
        raise CodetuneError(f"model {encoder!r}: its tokenizer has no end and start tokens for a decoder")
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(
            source,
            source,
            encoder_revision=revision,
            decoder_revision=revision,
            encoder_dtype=torch.float32,
            decoder_dtype=torch.float32,
        )
    except (OSError, ValueError) as e:
        raise CodetuneError(
            f"model {encoder!r}: cannot warm-start an encoder-decoder from it ({str(e).splitlines()[0]})"
        ) from e
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = start
        config.pad_token_id = tok.pad_token_id
        config.eos_token_id = tok.eos_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    return model, tok


def load_for_training(
    cfg: ModelConfig,
    texts: list[str],
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    lora: LoraSettings | None = None,
    device: str = "cpu",
) -> tuple[Any, Any, Kind, str]:
    """Model, tokenizer, kind and a reference to the base (name/folder; "" for presets, saved later).

    A pretrained model's weights load straight into `dtype`; presets are built in fp32. With
    `lora.quantize` 4bit (QLoRA) they load in 4-bit NF4 on `device` instead, `dtype` the compute dtype.

    Presets train their tokenizer on `texts`. `encoder-decoder:<encoder>` warm-starts a seq2seq model
    from an encoder-only one (its random cross-attention makes it a new base, saved like a preset).
    """
    quantize = lora.quantize if lora is not None else "none"
    check_quantize(lora, cfg.name, device)  # before any model loads
    quiet_transformers()
    if cfg.name.startswith(WARM_START_PREFIX):
        if cfg.kind == "causal":
            raise CodetuneError(f"model.kind 'causal' does not fit {cfg.name!r} (an encoder-decoder)")
        model, tok = build_encoder_decoder(
            cfg.name[len(WARM_START_PREFIX) :], cfg.revision, cfg.trust_remote_code
        )
        if cfg.dropout is not None:
            _set_dropout(model, cfg.dropout)
        return model, tok, "seq2seq", ""
    if cfg.name in TINY_PRESETS:
        preset_kind: Kind = "causal" if TINY_PRESETS[cfg.name] == "causal" else "seq2seq"
        if cfg.kind not in ("auto", preset_kind):
            raise CodetuneError(f"model.kind {cfg.kind!r} does not fit preset {cfg.name!r} ({preset_kind})")
        tok = train_tokenizer(texts, cfg.tiny.vocab_size)
        return build_tiny_model(cfg.name, tok, cfg.tiny, cfg.dropout), tok, preset_kind, ""
    source = resolve_source(cfg.name)
    kind: Kind = _auto_kind(source, cfg.revision, cfg.trust_remote_code) if cfg.kind == "auto" else cfg.kind
    quantization = qlora_load_options(dtype, device) if quantize == "4bit" else None
    model = load_pretrained(
        source, kind, cfg.revision, cfg.trust_remote_code, dtype, attn_implementation, quantization
    )
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        # norms and the output head in fp32 for stable training; the loop sets checkpointing itself
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.dropout is not None:
        _set_dropout(model, cfg.dropout)
    tok = load_tokenizer(source, cfg.revision, cfg.trust_remote_code)
    return model, tok, kind, source


def check_quantize(lora: LoraSettings | None, model_name: str, device: str) -> None:
    """train.lora.quantize=4bit needs LoRA on, a pretrained model, a CUDA device and bitsandbytes;
    a clear error for each, before anything loads."""
    if lora is None or lora.quantize == "none":
        return
    key = f"train.lora.quantize={lora.quantize}"  # without train.lora.enabled: refused at load (config.validate)
    if model_name in TINY_PRESETS or model_name.startswith(WARM_START_PREFIX):
        raise CodetuneError(
            f"{key}: model.name={model_name!r} is built here, not loaded; QLoRA needs a pretrained model"
        )
    if not device.startswith("cuda"):
        raise CodetuneError(
            f"{key} needs a CUDA GPU (bitsandbytes' 4-bit weights); this run is on {device}: "
            "set train.lora.quantize=none (plain LoRA) or run on a GPU"
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise CodetuneError(f"{key} needs bitsandbytes: pip install 'codetune[qlora]'")


def qlora_load_options(compute_dtype: torch.dtype, device: str) -> dict[str, Any]:
    """from_pretrained options for a QLoRA base: NF4 weights with double quantization (the QLoRA paper's
    recipe), matmuls in `compute_dtype`, every weight on this process's `device`."""
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    return {"quantization_config": config, "device_map": {"": device}}


@contextlib.contextmanager
def _peft_quietly() -> Iterator[None]:
    """peft reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning
    on every adapter load: nothing a user can act on, so it is kept off their screen (only that one)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def apply_lora(model: Any, lora: LoraSettings, kind: Kind) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    layers: dict[str, Any] = {}
    if lora.top_layers:
        total = _num_layers(model)
        if not 0 < lora.top_layers <= total:
            raise CodetuneError(f"train.lora.top_layers={lora.top_layers}: the model has {total} layers")
        # Only the last N blocks get adapters, so backpropagation stops below them (~40% less compute
        # per token with half the blocks): the lower blocks run forward only.
        layers = {"layers_to_transform": list(range(total - lora.top_layers, total))}
    targets = lora.target_modules
    if layers and isinstance(targets, str):
        targets = _linear_names(model) if targets == "all-linear" else [targets]
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type=TaskType.SEQ_2_SEQ_LM if kind == "seq2seq" else TaskType.CAUSAL_LM,
        **layers,
    )
    with _peft_quietly():
        return get_peft_model(model, config)


def _linear_names(model: Any) -> list[str]:
    """What peft's "all-linear" means, as names (peft refuses the string with layers_to_transform): the
    leaf names of the Linear layers inside the numbered blocks (the output head is not in a block)."""
    import re

    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and re.search(r"\.\d+\.", name)
    }
    if not names:
        raise CodetuneError("train.lora.top_layers: found no Linear layers inside numbered blocks")
    return sorted(names)


def _num_layers(model: Any) -> int:
    config = model.config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise CodetuneError("train.lora.top_layers: cannot tell this model's number of layers")


def load_trainable(model: Any, folder: Path) -> None:
    """Copy the tensors of `trainable.safetensors` into the model's parameters of the same names."""
    from safetensors.torch import load_file

    state = load_file(str(folder / TRAINABLE_FILE))
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise CodetuneError(f"{folder}: checkpoint has parameters the model lacks, e.g. {missing[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def load_for_inference(
    name: str, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None
) -> tuple[Any, Any, Kind, dict[str, Any]]:
    """Model (eval mode, in `dtype`, on the CPU), tokenizer, kind and meta for a trained folder,
    checkpoint, pack or hub name. A LoRA adapter is merged into its base."""
    quiet_transformers()
    folder = Path(name)
    meta = read_meta(folder) if folder.is_dir() else {}
    fmt = meta.get("format", "full")
    if fmt in ("lora", "checkpoint"):
        base = meta.get("base_model")
        if not base:
            raise CodetuneError(f"{folder}/{META_FILE}: no base_model recorded; cannot load this adapter")
        kind: Kind = meta.get("kind", "causal")
        model = load_pretrained(
            resolve_source(base), kind, dtype=dtype, attn_implementation=attn_implementation
        )
        tok = load_tokenizer(str(folder) if (folder / "tokenizer_config.json").is_file() else base)
        if fmt == "lora":
            from peft import PeftModel

            with _peft_quietly():
                model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        else:
            if meta.get("lora"):
                model = apply_lora(model, LoraSettings(**meta["lora"]), kind)
            load_trainable(model, folder)
            if meta.get("lora"):
                model = model.merge_and_unload()
    else:
        source = resolve_source(name)
        kind = meta.get("kind") or _auto_kind(source, None, False)
        model = load_pretrained(source, kind, dtype=dtype, attn_implementation=attn_implementation)
        tok = load_tokenizer(source)
    model.eval()
    return model, tok, kind, meta


def forward_parameters(model: Any) -> set[str]:
    """The argument names of the model's own forward, under a DistributedDataParallel or PEFT wrapper
    (whose forwards take `*args, **kwargs`)."""
    import inspect

    model = getattr(model, "module", model)  # DistributedDataParallel
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def prompt_config_of(meta: dict[str, Any], fallback: PromptConfig) -> PromptConfig:
    """The prompt settings a model was trained with, or `fallback` for a model codetune didn't train."""
    if "prompt" in meta:
        return PromptConfig(**meta["prompt"])
    return fallback


def meta_for(
    kind: Kind, prompt: PromptConfig, fmt: str, base_model: str, lora: LoraSettings | None
) -> dict[str, Any]:
    return {
        "format": fmt,
        "kind": kind,
        "base_model": base_model,
        "prompt": asdict(prompt),
        "lora": asdict(lora) if lora is not None and lora.enabled else None,
    }
