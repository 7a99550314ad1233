"""Tiny random HF model directories for fast tests: no download, no default model needed."""
from __future__ import annotations

import os
from pathlib import Path

ARCHS = ("llama", "mistral", "qwen2", "qwen3")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 2, a fridge 1.",
    "Your task is to: put a clean apple in the fridge. > go to countertop 1. On the countertop 1, you see a knife 1.",
    "take apple 1 from countertop 2. move apple 1 to fridge 1. clean apple 1 with sinkbasin 1. Nothing happens.",
    "The quick brown fox jumps over the lazy dog. 0123456789 system user assistant think: first I need to find it.",
]


def make_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained in memory, with ChatML specials and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _config(arch: str, vocab: int, tok, overrides: dict):
    from transformers import AutoConfig

    base = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6,
                initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    base.update({"llama": dict(tie_word_embeddings=False),
                 "mistral": dict(tie_word_embeddings=False, sliding_window=None),
                 "qwen2": dict(tie_word_embeddings=True, use_sliding_window=False),
                 "qwen3": dict(tie_word_embeddings=True, use_sliding_window=False)}[arch])
    base.update(overrides)
    return AutoConfig.for_model(arch, **base)


def make_tiny_model(path: str | os.PathLike, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a tiny random `arch` model (hidden 64, 2 layers, GQA 4/2, head_dim 16) with a ChatML tokenizer.

    arch: "llama" | "mistral" | "qwen2" (qkv bias, tied) | "qwen3" (q/k-norm, tied). `overrides` go into the
    config (e.g. rope_parameters, num_hidden_layers). Returns the directory, loadable by transformers and Engine.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}: expected one of {ARCHS}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    config = _config(arch, len(tok), tok, overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # HF init leaves norms at 1 and biases at 0: randomise them so tests see them
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_random_adapter(model_dir: str | os.PathLike, path: str | os.PathLike, r: int = 16, alpha: float = 32,
                        targets: tuple[str, ...] = ALL_TARGETS, seed: int = 0, use_rslora: bool = False,
                        std: float = 0.02) -> Path:
    """Write a PEFT LoRA directory for `model_dir` with random A and nonzero random B (so it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                            use_rslora=use_rslora, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    out = Path(path)
    model.save_pretrained(out)
    return out


def snap_q4_1(w):
    """fp32 (N, K) -> the nearest fp32 matrix that is GGUF Q4_1 exactly (ggml's quantize_row_q4_1, then gguf-py's
    de-quantisation): what a Q4_1 GGUF file de-quantises to."""
    import torch

    b = w.float().reshape(w.shape[0], -1, 32)
    m = b.amin(-1, keepdim=True).half().float()
    d = ((b.amax(-1, keepdim=True) - m) / 15).half().float()
    q = torch.round((b - m) / torch.where(d == 0, torch.ones_like(d), d)).clamp(0, 15)
    return (q * d + m).reshape(w.shape)


def snap_q8_0(w):
    """fp32 (N, K) -> the nearest fp32 matrix that is GGUF Q8_0 exactly (d = amax / 127 in fp16, q = round(w / d))."""
    import torch

    b = w.float().reshape(w.shape[0], -1, 32)
    d = (b.abs().amax(-1, keepdim=True) / 127).half().float()
    q = torch.round(b / torch.where(d == 0, torch.ones_like(d), d)).clamp(-128, 127)
    return (q * d).reshape(w.shape)


def snap_model_to_blocks(model_dir: str | os.PathLike) -> Path:
    """Rewrite a model directory's weights as a Q4_1 GGUF would de-quantise them (SmolLM2's file: projections Q4_1,
    the token embedding Q8_0; norms and biases stay fp32), in place. Returns the directory."""
    from safetensors.torch import load_file, save_file

    out = Path(model_dir)
    path = out / "model.safetensors"
    tensors = load_file(str(path))
    for name, t in tensors.items():
        if t.dim() == 2 and t.shape[1] % 32 == 0:
            tensors[name] = (snap_q8_0 if "embed_tokens" in name else snap_q4_1)(t).contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})
    return out
