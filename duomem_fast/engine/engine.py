"""The engine: a loaded decoder, its tokenizer, the prefix store, and the batched model calls sessions use."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from duomem_fast.engine.identity import model_fingerprint
from duomem_fast.engine.kv import KVBuffer, Prefix
from duomem_fast.engine.prefix_store import PrefixStore
from duomem_fast.engine.session import Session
from duomem_fast.engine.stats import Stats
from duomem_fast.model.decoder import Decoder, Step

PREFILL_CHUNK = 1024  # tokens per forward while encoding: bounds the (T, context) score matrix


class Engine:
    """Entry point: `Engine.from_pretrained(model=None, adapter=None, merge_lora=False, dtype=None)`."""

    def __init__(self, decoder: Decoder, tokenizer, fingerprint: str, model_dir: Path,
                 prefix_budget_bytes: int = 2 << 30, lookahead: int = 0) -> None:
        self.decoder, self.tokenizer, self.fingerprint, self.model_dir = decoder, tokenizer, fingerprint, model_dir
        self.config = decoder.cfg
        self.dtype = decoder.dtype
        self.store = PrefixStore(prefix_budget_bytes)
        self.stats = Stats()
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.lookahead = lookahead  # greedy prompt-lookup draft length (0 = off); see engine/lookahead.py
        self.eos_ids = set(self.config.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        cfg = self.config
        empty = torch.empty(cfg.num_layers, 0, cfg.num_kv_heads, cfg.head_dim, dtype=self.dtype)
        self._empty = Prefix(tokens=(), k=empty, v=empty, logits=None)

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, adapter: str | Path | None = None,
                        merge_lora: bool = False, dtype: str | torch.dtype | None = None, **options) -> "Engine":
        """Load a model (None = the default SmolLM2-135M-Instruct; or a local HF directory) and optionally a PEFT
        LoRA adapter directory, merged into the weights or kept unmerged. dtype: None/"float32" or "bfloat16".
        options: attn_impl ("auto" | "flash" | "torch" | "lowp" | "ops"), prefix_budget_bytes, lookahead (greedy
        prompt-lookup draft length, 0 = off), fused_decode (True: decode tokens and one session's appends of 16+
        tokens (at G=3) run the layer stack in one native call where built; False: the eager layer loop), weight_dtype ("bfloat16" under dtype float32: projection
        weights stored in bf16, half the bytes per token, while activations and KV stay fp32), block_weights (True:
        in fp32, matrices that are exactly GGUF Q4_1/Q8_0 blocks de-quantised, as the default model's are, are kept
        in those blocks and widened exactly in the kernel: the same weight values, a fifth of the bytes a token)."""
        from duomem_fast.engine.build import build_engine

        return build_engine(cls, model, adapter, merge_lora, dtype, **options)

    # ---- text -------------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without added special tokens (chat templates write their own)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The model's own chat template applied to `messages` ([{"role", "content"}])."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {str(self.model_dir)!r} has no chat template")
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def finish_text(self, gen: list[int], stop: Sequence[str]) -> str:
        ids = gen[:-1] if gen and gen[-1] in self.eos_ids else gen
        text = self.decode(ids)
        cuts = [text.find(s) for s in stop if s and s in text]
        return text[:min(cuts)] if cuts else text

    # ---- prefixes and sessions --------------------------------------------------------------------------------
    def prefix(self, text_or_ids: str | Sequence[int]) -> Prefix:
        """Encoded prefix handle. Same tokens -> the cached one; an extension of a cached prefix encodes only
        the new tokens. Stored in an LRU under the memory budget."""
        tokens = tuple(self._ids(text_or_ids))
        if not tokens:
            return self._empty
        self._check_fits(len(tokens))
        hit = self.store.get(tokens)
        if hit is not None:
            self.stats.tokens_reused += len(tokens)
            return hit
        parent = self.store.longest_prefix_of(tokens) or self._empty
        self.stats.tokens_reused += len(parent)
        new = list(tokens[len(parent):])
        kv = KVBuffer(self.config.num_layers, self.config.num_kv_heads, self.config.head_dim, self.dtype,
                      capacity=len(new))
        logits = self._encode(new, parent, kv)
        self.stats.tokens_encoded += len(new)
        k, v = kv.view()
        if len(parent):
            k, v = torch.cat([parent.k, k], dim=1), torch.cat([parent.v, v], dim=1)
        prefix = Prefix(tokens=tokens, k=k, v=v, logits=logits)
        self.store.put(prefix)
        return prefix

    def session(self, prefix: Prefix | str | Sequence[int] | None = None) -> Session:
        """A new session on `prefix` (a handle, or text/ids to look up or encode; None = empty context)."""
        if prefix is None:
            prefix = self._empty
        elif not isinstance(prefix, Prefix):
            prefix = self.prefix(prefix)
        return Session(self, prefix)

    def chat(self, messages: list[dict] | None = None):
        """A Conversation whose leading `messages` (rendered with the chat template) are a cached prefix."""
        from duomem_fast.engine.chat import Conversation

        return Conversation(self, list(messages or []))

    def save_prefix(self, prefix: Prefix, path: str | Path) -> None:
        from duomem_fast.engine.persist import save_prefix

        save_prefix(self, prefix, Path(path))

    def load_prefix(self, path: str | Path, expect: str | Sequence[int] | None = None) -> Prefix:
        """Load a saved prefix; refused (ValueError) if it was made by a different model/adapter/mode/dtype, or if
        its tokens differ from `expect`."""
        from duomem_fast.engine.persist import load_prefix

        return load_prefix(self, Path(path), expect)

    # ---- batches ----------------------------------------------------------------------------------------------
    def generate_batch(self, sessions: Sequence[Session], max_new_tokens: int = 64, stop: Sequence[str] | None = None,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """Decode several sessions on one prefix together (one forward per token for all). Same semantics as
        Session.generate for each."""
        from duomem_fast.engine.batch import generate_batch

        return generate_batch(self, list(sessions), max_new_tokens, list(stop or []), temperature, top_p, seed)

    def score_batch(self, sessions: Sequence[Session], candidates: Sequence[Sequence[str | Sequence[int]]]
                    ) -> list[list[float]]:
        """Session.score for each (session, its candidates) pair."""
        if len(sessions) != len(candidates):
            raise ValueError(f"score_batch got {len(sessions)} sessions but {len(candidates)} candidate lists")
        return [s.score(c) for s, c in zip(sessions, candidates)]

    # ---- model calls (internal) -------------------------------------------------------------------------------
    def _ids(self, text_or_ids: str | Sequence[int]) -> list[int]:
        if isinstance(text_or_ids, str):
            return self.encode(text_or_ids)
        ids = [int(t) for t in text_or_ids]
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} out of range [0, {self.config.vocab_size})")
        return ids

    def _check_fits(self, n_tokens: int) -> None:
        if n_tokens > self.config.max_context:
            raise ValueError(f"context of {n_tokens} tokens exceeds the model's limit of {self.config.max_context}")

    def _encode(self, ids: list[int], shared: Prefix, kv: KVBuffer) -> torch.Tensor | None:
        """Run `ids` after `shared` + kv's tokens, writing KV into `kv`; returns the last token's logits."""
        logits = shared.logits if kv.length == 0 else None
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[start:start + PREFILL_CHUNK]
            kv.reserve(len(chunk))
            pos0 = len(shared) + kv.length
            step = Step(positions=torch.arange(pos0, pos0 + len(chunk))[None], shared=[(shared.k, shared.v)],
                        own_k=kv.k, own_v=kv.v, own_start=[kv.length])
            logits = self._forward(torch.tensor([chunk]), step)[0]
            kv.length += len(chunk)
        return logits

    def _run(self, session: Session, ids: list[int]) -> torch.Tensor:
        t0 = time.perf_counter()
        logits = self._encode(ids, session.prefix, session.kv)
        session.stats.model_seconds += time.perf_counter() - t0
        return logits

    def _run_all(self, session: Session, ids: list[int]) -> torch.Tensor:
        """Run a few own tokens of `session`; logits of every one, (len(ids), vocab)."""
        t0, kv = time.perf_counter(), session.kv
        kv.reserve(len(ids))
        pos0 = len(session.prefix) + kv.length
        step = Step(positions=torch.arange(pos0, pos0 + len(ids))[None], shared=[(session.prefix.k, session.prefix.v)],
                    own_k=kv.k, own_v=kv.v, own_start=[kv.length])
        logits = self._forward(torch.tensor([ids]), step, logits="all")[0]
        kv.length += len(ids)
        session.stats.model_seconds += time.perf_counter() - t0
        return logits

    def _forward(self, ids: torch.Tensor, step: Step, logits: str = "last") -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.decoder.forward(ids, step, logits)
        self.stats.model_seconds += time.perf_counter() - t0
        return out

    def _score(self, session: Session, candidates: Sequence[str | Sequence[int]]) -> list[float]:
        from duomem_fast.engine.batch import score_candidates

        return score_candidates(self, session, candidates)
