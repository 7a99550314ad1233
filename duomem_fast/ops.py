"""The op dispatcher: the engine's model calls only these functions.

CUDA tensors go to the Triton kernels (`duomem_fast.kernels.*`); CPU tensors to the C++ build
(`torch.ops.duomem.*` from `duomem_fast._C`) when present, else to the pure-torch references in
`duomem_fast.kernels.reference`. The path taken is logged once per op and path. `set_backend("reference")` forces the
readable path (tests run both and compare).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import math

import torch
from torch import Tensor

from duomem_fast.kernels import checks
from duomem_fast.kernels import reference as ref

log = logging.getLogger("duomem_fast.ops")
_FORCED: str | None = None
_SAID: set[tuple[str, str]] = set()
_NATIVE_CPU = False  # CPU lora_linear resolved to the native build (and logged): set on first use, reset by set_backend
BACKENDS = ("reference", "native", "triton")


def _load_native():
    try:
        native = importlib.import_module("duomem_fast._C")
    except ImportError as e:  # no build (DUOMEM_NO_NATIVE=1, or built for another torch): readable path instead
        log.info("duomem_fast._C not loaded (%s): CPU ops use the pure-torch references", e)
        return None
    _register_fakes()
    return native


def _register_fakes() -> None:
    """Meta implementations so torch.compile / FakeTensor can trace through torch.ops.duomem.*."""
    @torch.library.register_fake("duomem::lora_linear")
    def _(x, weight, lora_a, lora_b, scale, scales, bias, adapter_ids):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake("duomem::prefix_attention")
    def _(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_lens, scale):
        return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)

    @torch.library.register_fake("duomem::merge_attention")
    def _(o_a, lse_a, o_b, lse_b):
        return o_a.new_empty(o_a.shape), lse_a.new_empty(lse_a.shape, dtype=torch.float32)

    if hasattr(torch.ops.duomem, "dequantize_blocks"):
        @torch.library.register_fake("duomem::dequantize_blocks")
        def _(blocks):
            return blocks.new_empty((blocks.shape[0], blocks.shape[1] * ref.BLOCK), dtype=torch.float32)

    if not hasattr(torch.ops.duomem, "decode_step"):  # a build from before the decode ops
        return

    @torch.library.register_fake("duomem::decode_attention")
    def _(q, k_prefix, v_prefix, k_own, v_own, own_lens, scale):
        return q.new_empty(q.shape)

    @torch.library.register_fake("duomem::decode_step")
    def _(x, weights, extras, cos, sin, k_prefix, v_prefix, own_k, own_v, own_start, eps):
        return x.new_empty(x.shape)

    if hasattr(torch.ops.duomem, "append_step"):
        @torch.library.register_fake("duomem::append_step")
        def _(x, weights, extras, cos, sin, k_prefix, v_prefix, own_k, own_v, own_start, eps):
            return x.new_empty(x.shape)


_C = _load_native()
HAS_NATIVE = _C is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None
_is_compiling = torch.compiler.is_compiling  # bound once: the lookups cost ~0.05 us of the decode hot path


def set_backend(name: str | None) -> None:
    """Force a backend for every op: "reference", "native", "triton", or None for automatic choice."""
    global _FORCED, _NATIVE_CPU
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected 'reference', 'native', 'triton' or None")
    if name == "native" and not HAS_NATIVE:
        raise ValueError("backend 'native' requested but duomem_fast._C is not built (pip install -e . without "
                         "DUOMEM_NO_NATIVE=1)")
    if name == "triton" and not HAS_TRITON:
        raise ValueError("backend 'triton' requested but triton is not installed")
    _FORCED = name
    _NATIVE_CPU = False


def backend(device_type: str = "cpu") -> str:
    """The backend the dispatcher uses for tensors on `device_type`."""
    if _FORCED is not None:
        return _FORCED
    if device_type == "cuda":
        return "triton" if HAS_TRITON else "reference"
    return "native" if HAS_NATIVE and device_type == "cpu" else "reference"


def cpu_isa() -> str:
    """The vector ISA the native CPU ops were compiled for: "avx512" (+"+bf16", +"+amx"), "avx2" (CPUs without
    AVX-512, or a DUOMEM_PORTABLE=1 build) or "portable"; "none" without the native build."""
    return _C.cpu_isa() if HAS_NATIVE else "none"


def _say(op: str, path: str) -> None:
    if (op, path) not in _SAID:
        _SAID.add((op, path))
        log.info("duomem_fast.ops.%s -> %s", op, path)


def lora_linear(x: Tensor, weight: Tensor, lora_a: Tensor | None = None, lora_b: Tensor | None = None,
                scale: float | Tensor = 1.0, bias: Tensor | None = None, adapter_ids: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias), fp32 accumulation, output in x.dtype.

    x: (..., K); weight: (N, K), or uint8 (N, K/32, 24 | 36) GGUF Q4_1 | Q8_0 blocks with fp32 scales
    (`reference.dequantize_blocks_ref`, packed by `duomem_fast.model.blocks`); lora_a (r, K), lora_b (N, r);
    multi-adapter: lora_a (n, r, K), lora_b (n, N, r), adapter_ids (M,) with -1 = base only, scale a float or (n,).
    Returns (..., N).
    """
    # Decode hot path (~200 calls per token, 576->192 takes ~6 us in all): once a CPU call has resolved to the native
    # build and said so, CPU calls skip the resolution and logging (x.is_cpu is 0.05 us, x.device.type 0.25 us). The
    # C++ op checks every shape itself (TORCH_CHECK); the Python checks run only to turn its RuntimeError into the
    # ValueError naming the bad value.
    if (_NATIVE_CPU and x.is_cpu and (lora_a is None) == (lora_b is None)
            and (adapter_ids is None or lora_a is not None) and not _is_compiling()):
        scales = scale if isinstance(scale, Tensor) else None
        try:
            return _C.lora_linear_cpu(x, weight, lora_a, lora_b, 1.0 if scales is not None else float(scale), scales,
                                      bias, adapter_ids)
        except RuntimeError:
            checks.check_lora_linear(x, weight, lora_a, lora_b, bias, adapter_ids)
            raise
    return _lora_linear_resolved(x, weight, lora_a, lora_b, scale, bias, adapter_ids)


def _lora_linear_resolved(x: Tensor, weight: Tensor, lora_a: Tensor | None, lora_b: Tensor | None,
                          scale: float | Tensor, bias: Tensor | None, adapter_ids: Tensor | None) -> Tensor:
    """lora_linear through the full backend resolution: first CPU call, other devices, tracing, bad arguments."""
    global _NATIVE_CPU
    path = backend(x.device.type)
    _say("lora_linear", path)
    if path == "native" and (lora_a is None) == (lora_b is None) and (adapter_ids is None or lora_a is not None):
        if x.is_cpu and not torch.compiler.is_compiling():
            _NATIVE_CPU = True  # resolved and said: this and later CPU calls take the fast path
            return lora_linear(x, weight, lora_a, lora_b, scale, bias, adapter_ids)
        scales = scale if isinstance(scale, Tensor) else None
        try:
            return torch.ops.duomem.lora_linear(x, weight, lora_a, lora_b, 1.0 if scales is not None else float(scale),
                                                scales, bias, adapter_ids)
        except RuntimeError:
            checks.check_lora_linear(x, weight, lora_a, lora_b, bias, adapter_ids)
            raise
    checks.check_lora_linear(x, weight, lora_a, lora_b, bias, adapter_ids)
    if path == "triton":
        from duomem_fast.kernels.lora_linear import lora_linear as tl_lora_linear
        if weight.dtype == torch.uint8:  # GGUF blocks: widened first (the Triton kernel reads fp32/bf16/fp16 W)
            weight = ref.dequantize_blocks_ref(weight)
        return tl_lora_linear(x, weight, lora_a, lora_b, scale, bias, adapter_ids)
    return ref.lora_linear_ref(x, weight, lora_a, lora_b, scale, bias, adapter_ids)


def dequantize_blocks(blocks: Tensor) -> Tensor:
    """uint8 (N, K/32, 24 | 36) Q4_1 | Q8_0 blocks -> their fp32 (N, K) matrix, exactly (`dequantize_blocks_ref`)."""
    if blocks.dtype != torch.uint8 or blocks.dim() != 3 or blocks.shape[2] not in (ref.Q4_1_BYTES, ref.Q8_0_BYTES):
        return ref.dequantize_blocks_ref(blocks)  # raises the ValueError naming the shape
    path = backend(blocks.device.type)
    _say("dequantize_blocks", path)
    if path == "native" and hasattr(torch.ops.duomem, "dequantize_blocks"):
        return torch.ops.duomem.dequantize_blocks(blocks)
    return ref.dequantize_blocks_ref(blocks)


def prefix_attention(q: Tensor, k_prefix: Tensor | None, v_prefix: Tensor | None, k_suffix: Tensor | None = None,
                     v_suffix: Tensor | None = None, suffix_lens: Tensor | None = None, scale: float | None = None,
                     return_lse: bool = False):
    """Attention of B sequences' last T tokens over one shared prefix KV plus each sequence's own causal suffix KV.

    q: (B, T, Hq, D); k/v_prefix: (P, Hkv, D) shared; k/v_suffix: (B, S, Hkv, D) right-padded, suffix_lens (B,).
    Returns o (B, T, Hq, D) in q.dtype, plus lse (B, T, Hq) fp32 if return_lse. See `prefix_attention_ref`.
    """
    checks.check_prefix_attention(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_lens)
    path = backend(q.device.type)
    _say("prefix_attention", path)
    if path == "native":
        s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        o, lse = torch.ops.duomem.prefix_attention(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_lens, s)
        return (o, lse) if return_lse else o
    if path == "triton":
        from duomem_fast.kernels.prefix_attention import prefix_attention as tl_prefix_attention
        return tl_prefix_attention(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_lens, scale, return_lse)
    return ref.prefix_attention_ref(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_lens, scale, return_lse)


def merge_attention(o_a: Tensor, lse_a: Tensor, o_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Exact merge of two partial attentions through their log-sum-exp. o (..., H, D), lse (..., H)."""
    checks.check_merge_attention(o_a, lse_a, o_b, lse_b)
    path = backend(o_a.device.type)
    _say("merge_attention", path)
    if path == "native":
        return torch.ops.duomem.merge_attention(o_a, lse_a, o_b, lse_b)
    if path == "triton":
        from duomem_fast.kernels.prefix_attention import merge_attention as tl_merge_attention
        return tl_merge_attention(o_a, lse_a, o_b, lse_b)
    return ref.merge_attention_ref(o_a, lse_a, o_b, lse_b)


def has_decode_step(device_type: str = "cpu") -> bool:
    """Whether `decode_step` runs here: the native CPU build with the decode ops, native backend in use."""
    return device_type == "cpu" and backend("cpu") == "native" and hasattr(_C, "decode_step_cpu")


def has_append_step(device_type: str = "cpu") -> bool:
    """Whether `append_step` runs here: the native CPU build with it, native backend in use."""
    return device_type == "cpu" and backend("cpu") == "native" and hasattr(_C, "append_step_cpu")


def tiled_min_rows() -> int:
    """Query rows per KV head from which the native prefix_attention runs on register tiles (48 on AVX-512 builds,
    12 on AVX2 ones); the model sends one session's appends of that many rows to `append_step`. 48 without the
    native build (nothing routes by it there)."""
    return int(_C.tiled_min_rows()) if HAS_NATIVE and hasattr(_C, "tiled_min_rows") else 48


def decode_attention(q: Tensor, k_prefix: Tensor | None, v_prefix: Tensor | None, k_own: Tensor, v_own: Tensor,
                     own_lens: list[int], scale: float | None = None) -> Tensor:
    """Attention of one new token per sequence over a shared prefix plus its own KV (native CPU, fp32).

    q: (B, Hq, D); k/v_prefix: (P, Hkv, D) or None; k/v_own: (B, S, Hkv, D), row b sees own rows [0, own_lens[b]).
    Returns (B, Hq, D). Same as `prefix_attention` with T=1 and suffix_lens=own_lens (the reference).
    """
    if not has_decode_step(q.device.type):
        raise ValueError("decode_attention needs the native CPU build (duomem_fast._C with the decode ops)")
    _say("decode_attention", "native")
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    try:
        return torch.ops.duomem.decode_attention(q, k_prefix, v_prefix, k_own, v_own, list(own_lens), s)
    except RuntimeError as e:  # the C++ checks name the bad value; the API edge raises ValueError
        raise ValueError(f"decode_attention: {str(e).splitlines()[0]}") from e


def decode_step(x: Tensor, weights: list[Tensor], extras: list[Tensor | None], cos: Tensor, sin: Tensor,
                k_prefix: Tensor | None, v_prefix: Tensor | None, own_k: Tensor, own_v: Tensor,
                own_start: list[int], eps: float) -> Tensor:
    """One decode token per row through every decoder layer in one native call (fp32, CPU).

    x: (B, H). weights: per layer [ln_attn, qkv, o, ln_mlp, gate_up, down]; extras: per layer [qkv_bias, o_bias,
    gate_up_bias, down_bias, q_norm, k_norm, qkv_a, qkv_b, o_a, o_b, gate_up_a, gate_up_b, down_a, down_b] (None
    where absent; LoRA scale folded into b). cos/sin: (B, D) at each row's position. k/v_prefix: (L, P, Hkv, D)
    shared or None. own_k/own_v: (L, B, cap, Hkv, D); row b's new KV is written at own_start[b] and it attends to own
    rows [0, own_start[b]]. Returns the hidden state after the last layer, (B, H), before the final norm.
    The reference is the eager layer loop of `duomem_fast.model.decoder.Decoder` (fused_decode=False).
    """
    if not has_decode_step(x.device.type):
        raise ValueError("decode_step needs the native CPU build (duomem_fast._C with the decode ops)")
    _say("decode_step", "native")
    return _layer_stack("decode_step", x, weights, extras, cos, sin, k_prefix, v_prefix, own_k, own_v,
                        list(own_start), eps)


def append_step(x: Tensor, weights: list[Tensor], extras: list[Tensor | None], cos: Tensor, sin: Tensor,
                k_prefix: Tensor | None, v_prefix: Tensor | None, own_k: Tensor, own_v: Tensor, own_start: int,
                eps: float) -> Tensor:
    """One session's T new tokens (an append, a prefill chunk) through every decoder layer in one native call
    (fp32, CPU).

    x: (T, H). weights, extras, k/v_prefix: as `decode_step`. cos/sin: (T, D) at the tokens' positions.
    own_k/own_v: (L, 1, cap, Hkv, D); token t's KV is written at own row own_start + t and it attends to the prefix
    and own rows [0, own_start + t]. Returns the hidden states after the last layer, (T, H), before the final norm.
    The reference is the eager layer loop of `duomem_fast.model.decoder.Decoder` (fused_decode=False).
    """
    if not has_append_step(x.device.type):
        raise ValueError("append_step needs the native CPU build (duomem_fast._C with append_step)")
    _say("append_step", "native")
    return _layer_stack("append_step", x, weights, extras, cos, sin, k_prefix, v_prefix, own_k, own_v,
                        int(own_start), eps)


def _layer_stack(name: str, *args) -> Tensor:
    """decode_step / append_step: the registered op under torch.compile, else the direct binding (the dispatcher
    would box ~600 list entries per call)."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.duomem, name)(*args)
    try:
        return getattr(_C, f"{name}_cpu")(*args)
    except RuntimeError as e:  # the C++ checks name the bad value; the API edge raises ValueError
        raise ValueError(f"{name}: {str(e).splitlines()[0]}") from e
