"""Export a codetune LoRA adapter to a llama.cpp LoRA GGUF, for base models that came from a GGUF pack.

A model pack's transformers folder is the pack's GGUF dequantised to fp32, so a LoRA trained on it is
exact on top of the original GGUF: llama.cpp loads `base.gguf` + `adapter.gguf` and computes
W x + (alpha / r) B A x, the same function PEFT trains (up to llama.cpp's quantised matmuls). This
keeps the chat template and tokenizer of the GGUF the model was tuned from: nothing is re-templated.

Layout written by llama.cpp's own `convert_lora_to_gguf.py`: `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha`, and for every adapted weight `<gguf name>.lora_a`
(shape r x in) and `<gguf name>.lora_b` (shape out x r), in fp32.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from codetune.errors import CodetuneError

ADAPTER_GGUF = "adapter.gguf"
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def base_gguf_of(meta: dict[str, Any]) -> Path | None:
    """The GGUF a model folder's base was converted from (model packs record it), if any."""
    base = Path(str(meta.get("base_model", "")))
    stamp = base / "codetune-conversion.json"
    if not stamp.is_file():
        return None
    gguf_name = json.loads(stamp.read_text()).get("gguf")
    path = base.parent / gguf_name if gguf_name else None
    return path if path is not None and path.is_file() else None


def lora_to_gguf(folder: Path, out: Path | None = None) -> Path:
    """Write `folder/adapter.gguf` (or `out`) from a PEFT adapter folder; returns its path.

    Refuses settings llama.cpp's LoRA would compute differently (rsLoRA, DoRA, fan-in-fan-out).
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config_path = folder / "adapter_config.json"
    weights_path = folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise CodetuneError(f"{folder} is not a LoRA adapter folder (adapter_config.json + safetensors)")
    config = json.loads(config_path.read_text())
    for key in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if config.get(key):
            raise CodetuneError(f"{config_path}: {key}=true can't be exported to a llama.cpp LoRA GGUF")
    if config.get("modules_to_save"):
        raise CodetuneError(f"{config_path}: modules_to_save can't be exported to a llama.cpp LoRA GGUF")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CodetuneError(f"{config_path}: per-module ranks/alphas can't be exported (one alpha per file)")
    base = Path(str(config.get("base_model_name_or_path") or ""))
    hf_config_path = base / "config.json"
    if not hf_config_path.is_file():
        raise CodetuneError(f"{config_path}: base model {base} has no config.json to name the architecture")
    hf_config = json.loads(hf_config_path.read_text())
    arch = _gguf_arch(hf_config)
    n_blocks = int(hf_config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(arch, n_blocks)

    tensors = load_file(str(weights_path))
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise CodetuneError(f"{weights_path}: unexpected tensor {key!r} (not lora_A/lora_B)")
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    out = out or folder / ADAPTER_GGUF
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise CodetuneError(f"{weights_path}: {module} lacks lora_{'B' if 'A' in ab else 'A'}")
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise CodetuneError(f"{weights_path}: no llama.cpp tensor for {module!r}")
        writer.add_tensor(name + ".lora_a", np.ascontiguousarray(ab["A"], dtype=np.float32))
        writer.add_tensor(name + ".lora_b", np.ascontiguousarray(ab["B"], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def _gguf_arch(hf_config: dict[str, Any]) -> Any:
    import gguf

    model_type = str(hf_config.get("model_type", ""))
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    arch = by_name.get(model_type) or by_name.get(model_type.replace("_", ""))
    if arch is None:
        raise CodetuneError(f"model_type {model_type!r} has no llama.cpp architecture to export to")
    return arch


def export(
    folder: Path,
    merged: Path | None = None,
    gguf_out: Path | None = None,
    quant: str = "q4_k_m",
    push_to_hub: str | None = None,
    private: bool = False,
    dtype: str = "float32",
) -> list[Path]:
    """The `export` stage: a tuned model folder out as a merged transformers folder, a GGUF (+ Ollama
    Modelfile) and/or to a hub repository (what was written, else the folder itself). Returns the paths
    written."""
    if merged is None and gguf_out is None and push_to_hub is None:
        raise CodetuneError(
            "export: nothing to do; give --merged OUT, --gguf OUT.gguf and/or --push-to-hub REPO"
        )
    if not folder.is_dir():
        raise CodetuneError(
            f"{folder}: no such model folder (a train run's final/ or best/, or a checkpoint)"
        )
    written: list[Path] = []
    if merged is not None:
        from codetune.models.merge import merge_model

        written.append(merge_model(folder, merged, dtype))
    if gguf_out is not None:
        from codetune.models.export_gguf import MODELFILE, export_gguf

        if gguf_out.suffix != ".gguf":
            raise CodetuneError(f"--gguf {gguf_out}: name the file to write, ending in .gguf")
        path = export_gguf(folder, gguf_out, quant)
        written += [path, path.with_name(MODELFILE)]
    if push_to_hub is not None:
        from codetune.models.export_hub import push

        folders = [p for p in written if p.is_dir()] or ([] if written else [folder])
        push(push_to_hub, folders, [p for p in written if p.is_file()], private=private)
    return written
