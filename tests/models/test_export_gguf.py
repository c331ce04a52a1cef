"""GGUF export through llama.cpp's own converter and quantizer, and the Ollama Modelfile beside it.

The round trip (tuned model -> GGUF -> llama.cpp gives transformers' greedy tokens) runs on a tiny
random-init Llama with a SentencePiece tokenizer trained on the spot (llama.cpp's converter accepts
SentencePiece vocabularies without a known-tokenizer hash). It needs the converter extracted in the cache
(`make llamacpp` fetches it) and llama-cpp-python; it is skipped, saying so, where either is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from codetune.config import Config, LoraSettings, PromptConfig
from codetune.data.format import build_prompt
from codetune.errors import CodetuneError
from codetune.models import export_gguf as eg
from codetune.models.loading import apply_lora, meta_for, write_meta
from tests.conftest import make_pairs

TEMPLATES = Path(__file__).parent / "chat_templates"
CHATML_SPECIAL = ["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|fim_prefix|>"]
NEAR_TIE = 0.1  # logits: a gap f16 weight rounding can close (measured: see benchmarks/README.md)


def _render_go(template: str, system: str, prompt: str) -> str:
    """What Ollama renders for a one-turn chat with this TEMPLATE, up to the answer (only the constructs
    ollama_template writes: one if/else on .System, .Prompt, .Response and escaped {{)."""
    head = template.split("{{ .Response }}")[0]
    if head.startswith("{{ if .System }}"):
        with_system, _, rest = head[len("{{ if .System }}") :].partition("{{ else }}")
        head = with_system if system else rest.removesuffix("{{ end }}")
    return head.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt).replace('{{ "{{" }}', "{{")


def _chat(template: str) -> Any:
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(messages: list[dict[str, str]]) -> str:
        out = render_jinja_template(
            conversations=[messages], chat_template=template, add_generation_prompt=True
        )[0]
        return str(out[0])

    return render


@pytest.mark.parametrize("family", ["smollm2", "qwen2.5"])
@pytest.mark.parametrize("system", [None, "You write short Python functions."])
def test_ollama_template_renders_the_training_prompt(family: str, system: str | None) -> None:
    chat_template = (TEMPLATES / f"{family}.jinja").read_text()
    prompt = PromptConfig(style="chat", template="Write code: {nl} {{json}}", system=system)
    template, shown = eg.ollama_template(prompt, chat_template, CHATML_SPECIAL)
    desc = "Return the sum of a and b."
    trained = build_prompt(desc, prompt, _chat(chat_template))
    assert _render_go(template, system or "", desc) == trained
    # without a system message the chat template's default one is kept (SmolLM2's, Qwen's)
    assert ("You are" in trained) == (system is None)
    assert template.endswith("{{ .Response }}<|im_end|>\n")
    assert shown == ["<|im_end|>", "<|im_start|>"]


def test_plain_prompt_modelfile_has_template_system_and_stops() -> None:
    prompt = PromptConfig(template="### Instruction:\n{nl}\n### Response:\n")
    text = eg.ollama_modelfile("m-q4_k_m.gguf", prompt, None, [], "</s>")
    assert text == (
        "FROM ./m-q4_k_m.gguf\n"
        'TEMPLATE """### Instruction:\n{{ .Prompt }}\n### Response:\n{{ .Response }}"""\n'
        'PARAMETER stop "</s>"\n'
    )
    chat = PromptConfig(style="chat", template="{nl}", system="Be brief.")
    text = eg.ollama_modelfile(
        "m.gguf", chat, (TEMPLATES / "smollm2.jinja").read_text(), CHATML_SPECIAL, "<|im_end|>"
    )
    assert 'SYSTEM """Be brief."""' in text
    assert text.count("PARAMETER stop") == 2  # <|im_end|> once (shown and EOS), <|im_start|>
    with pytest.raises(CodetuneError, match="no chat template"):
        eg.ollama_modelfile("m.gguf", chat, None, [], None)


def _fake_sdist(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [
            (eg._VENDOR + "convert_hf_to_gguf.py", b"print('converter')\n"),
            (eg._VENDOR + "gguf-py/gguf/__init__.py", b""),
            (eg._VENDOR + "ggml/src/big.c", b"not wanted"),
            ("llama_cpp_python-0.3.36/setup.py", b"not wanted"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_converter_comes_from_the_pinned_sdist_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = _fake_sdist(tmp_path / "llama_cpp_python-0.3.36.tar.gz")
    monkeypatch.setenv("CODETUNE_LLAMACPP_SDIST", str(sdist))
    with pytest.raises(CodetuneError, match="sha256"):
        eg.converter_dir(tmp_path / "cache")
    assert not (tmp_path / "cache" / "llama.cpp-convert" / "0.3.36").exists()
    monkeypatch.setattr(eg, "SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    folder = eg.converter_dir(tmp_path / "cache")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py", "sdist.sha256"]
    sdist.unlink()
    assert eg.converter_dir(tmp_path / "cache") == folder  # cached: the sdist is not needed again


def test_export_refuses_unknown_quant_and_seq2seq(tmp_path: Path) -> None:
    with pytest.raises(CodetuneError, match="--quant 'q5'"):
        eg.export_gguf(tmp_path, tmp_path / "m.gguf", "q5")
    write_meta(tmp_path, kind="seq2seq", format="full")
    with pytest.raises(CodetuneError, match="seq2seq"):
        eg.export_gguf(tmp_path, tmp_path / "m.gguf", "f16")


def _converter_or_skip() -> None:
    from codetune.models.pack import default_cache_dir

    folder = default_cache_dir() / "llama.cpp-convert" / eg.LLAMACPP_VERSION
    if not (folder / eg.CONVERTER).is_file():
        pytest.skip(f"llama.cpp's converter is not in {folder} (`make llamacpp` fetches it)")
    pytest.importorskip("sentencepiece", reason="the converter needs sentencepiece (the export extra)")


def _tiny_spm_lora(tmp_path: Path) -> tuple[Path, Any]:
    """A LoRA adapter folder (codetune.json, non-zero B) on a random 2-layer Llama whose tokenizer is a
    SentencePiece model trained here."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    base = tmp_path / "base"
    base.mkdir()
    texts = [r["docstring"] for r in make_pairs()] + [r["code"] for r in make_pairs()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=360, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    (base / "tokenizer.model").write_bytes(buf.getvalue())
    (base / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    tok = AutoTokenizer.from_pretrained(str(base))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=False, initializer_range=0.2,  # peaked logits: clear argmaxes
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(str(base))
    lora = LoraSettings(enabled=True, r=4, alpha=8)
    peft_model = apply_lora(LlamaForCausalLM.from_pretrained(str(base)), lora, "causal")
    nudge_adapter(peft_model, seed=1, scale=0.2)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    tok.save_pretrained(str(adapter))
    write_meta(adapter, **meta_for("causal", PromptConfig(), "lora", str(base), lora))
    return adapter, peft_model.eval()


def test_lora_model_to_gguf_f16_gives_transformers_greedy_tokens(tmp_path: Path) -> None:
    _converter_or_skip()
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make llamacpp`)")
    adapter, peft_model = _tiny_spm_lora(tmp_path)
    out = eg.export_gguf(adapter, tmp_path / "gguf" / "tiny-f16.gguf", "f16")
    assert sorted(p.name for p in out.parent.iterdir()) == ["Modelfile", "tiny-f16.gguf"]  # no leftovers
    assert "### Instruction:\n{{ .Prompt }}" in (out.parent / "Modelfile").read_text()

    llm = llama_cpp.Llama(str(out), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    try:
        differs_from_base = 0
        for desc in ["Return the sum of a and b.", "Return x raised to the power y.", "Return m minus n."]:
            text = build_prompt(desc, PromptConfig())
            ids = llm.tokenize(text.encode(), add_bos=False, special=False)
            tokens = list(ids)
            with torch.no_grad():
                for _ in range(16):
                    tokens.append(int(peft_model(torch.tensor([tokens])).logits[0, -1].argmax()))
                with peft_model.disable_adapter():
                    base_next = int(peft_model(torch.tensor([ids])).logits[0, -1].argmax())
            cpp = llamacpp_greedy(llm, ids, 16)
            assert cpp == tokens[len(ids) :]
            differs_from_base += int(base_next != tokens[len(ids)])
        assert differs_from_base > 0  # the LoRA is in the GGUF, not only the base
    finally:
        llm.close()


def test_q4_k_m_is_written_by_llamacpps_quantizer(tmp_path: Path) -> None:
    import gguf

    _converter_or_skip()
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make llamacpp`)")
    adapter, _ = _tiny_spm_lora(tmp_path)
    out = eg.export_gguf(adapter, tmp_path / "q" / "tiny.gguf", "q4_k_m")
    reader = gguf.GGUFReader(str(out))
    assert int(reader.fields["general.file_type"].parts[-1][0]) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert sorted(p.name for p in out.parent.iterdir()) == ["Modelfile", "tiny.gguf"]
    shutil.rmtree(tmp_path / "q")


def test_a_tokenizer_llamacpp_does_not_know_is_one_clear_error(trained_run: Config, tmp_path: Path) -> None:
    """The `tiny` preset's BPE, trained on the spot, has no pre-tokenizer llama.cpp knows: the converter's
    refusal comes back as a CodetuneError, and nothing is left behind."""
    _converter_or_skip()
    with pytest.raises(CodetuneError, match="llama.cpp does not know this model's tokenizer"):
        eg.export_gguf(Path(trained_run.train.output_dir) / "final", tmp_path / "out" / "m.gguf", "f16")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_smollm2_lora_to_gguf_f16_gives_transformers_greedy_tokens(tmp_path: Path) -> None:
    """A real small model: a LoRA on SmolLM2-135M-Instruct (the pack) exported to an f16 GGUF. llama.cpp's
    greedy tokens from the chat prompt's ids are transformers' (the adapter model, unmerged) top-1 at every
    position, except near-ties that f16 weight rounding can flip (a logit gap under NEAR_TIE), at most
    one per prompt. benchmarks/gguf_agreement.py measures 20 prompts, f32 and q4_k_m."""
    _converter_or_skip()
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make llamacpp`)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codetune.models.pack import default_cache_dir
    from codetune.training.batches import chat_renderer

    hf = default_cache_dir() / "models" / "smollm2-135m" / "hf"
    if not (hf / "config.json").is_file():
        pytest.skip("smollm2-135m is not in the cache (`codetune models fetch smollm2-135m`)")
    lora = LoraSettings(enabled=True, r=8, alpha=16)
    peft_model = apply_lora(AutoModelForCausalLM.from_pretrained(str(hf)), lora, "causal")
    nudge_adapter(peft_model, seed=0, scale=0.02)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    prompt = PromptConfig(style="chat", template="{nl}")
    write_meta(adapter, **meta_for("causal", prompt, "lora", str(hf), lora))
    peft_model.eval()
    out = eg.export_gguf(adapter, tmp_path / "smol-f16.gguf", "f16")
    assert "<|im_start|>user\n{{ .Prompt }}<|im_end|>" in (tmp_path / "Modelfile").read_text()

    tok = AutoTokenizer.from_pretrained(str(hf))
    llm = llama_cpp.Llama(str(out), n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    adapter_moved = 0
    try:
        for desc in ["Reverse a string.", "Check whether a number is prime.", "Flatten a list of lists."]:
            ids = tok(build_prompt(desc, prompt, chat_renderer(tok)), add_special_tokens=False)["input_ids"]
            cpp = llamacpp_greedy(llm, ids, 16)
            with torch.no_grad():
                logits = peft_model(torch.tensor([ids + cpp[:-1]])).logits[0, len(ids) - 1 :]  # (16, vocab)
                with peft_model.disable_adapter():
                    base = peft_model(torch.tensor([ids + cpp[:-1]])).logits[0, len(ids) - 1 :]
            top = logits.argmax(-1).tolist()
            gaps = [
                float(logits[i, t] - logits[i, c])
                for i, (t, c) in enumerate(zip(top, cpp, strict=True))
                if t != c
            ]
            assert len(gaps) <= 1 and all(g < NEAR_TIE for g in gaps), (desc, cpp, top, gaps)
            adapter_moved += int(base.argmax(-1).tolist() != top)
    finally:
        llm.close()
    assert adapter_moved > 0  # the LoRA changes what the model writes: it is in the GGUF


def nudge_adapter(peft_model: Any, seed: int, scale: float) -> None:
    """Random LoRA B matrices (PEFT starts them at zero, where the adapter would change nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def llamacpp_greedy(llm: Any, ids: list[int], steps: int) -> list[int]:
    """llama.cpp's greedy continuation of `ids`, `steps` tokens, from its own logits."""
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(steps):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out
