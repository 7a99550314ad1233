"""The decoder's configuration, read from an HF config.json (transformers 4.x and 5.x field names)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(slots=True)
class ModelConfig:
    """Shapes and options of a Llama-family decoder. `hf` keeps the transformers config (RoPE init needs it)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_context: int
    tie_word_embeddings: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]
    hf: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED:
            raise ValueError(f"unsupported model_type {self.model_type!r}: supported are {SUPPORTED}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads {self.num_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_kv_heads}")
        if self.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}: only 'silu' (SwiGLU) is supported")

    @property
    def hidden_act(self) -> str:
        return getattr(self.hf, "hidden_act", "silu") if self.hf is not None else "silu"

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def load_config(model_dir: Path) -> ModelConfig:
    """ModelConfig for an HF model directory; unsupported architectures are refused by name."""
    import json

    raw = json.loads((model_dir / "config.json").read_text())
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"unsupported model_type {model_type!r} in {model_dir / 'config.json'}: "
                         f"supported are {SUPPORTED}")
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(model_dir)
    heads = hf.num_attention_heads
    eos = hf.eos_token_id
    eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    return ModelConfig(
        model_type=model_type, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size, num_layers=hf.num_hidden_layers, num_heads=heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // heads, rms_norm_eps=hf.rms_norm_eps,
        max_context=_max_context(hf), tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        qk_norm=model_type == "qwen3", eos_token_ids=eos, hf=hf)


def _max_context(hf) -> int:
    """Longest context we compute exactly: max positions, capped by an active sliding window."""
    limit = hf.max_position_embeddings
    window = getattr(hf, "sliding_window", None)
    if window and getattr(hf, "use_sliding_window", True):
        limit = min(limit, window)
    return int(limit)
