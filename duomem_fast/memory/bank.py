"""The memory bank: memories in a versioned JSONL file, their task embeddings in a safetensors file beside it.

File layout (`bank.jsonl` + `bank.safetensors`):
  line 1: {"format": "duomem-memory-bank", "version": 1, "count": N, "content_sha": ..., "meta": {...}}
  then one Memory per line (see record.py);
  bank.safetensors: "embeddings" (N, 384) fp16 rows in file order, metadata {"embedder", "content_sha"}.
Embeddings are a cache: missing, stale (content_sha differs) or from another embedder, they are recomputed.

Retrieval (Memp's "query" policy): cosine of task-sentence embeddings, top-k. With `type_boost` > 0 a memory of
the query's task type (given, or parsed from the goal templates) gains `type_boost`, so same-type memories rank
first and cosine orders them by objects and receptacles; `type_boost=0` is pure cosine.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from duomem_fast.memory.embed import BM25, BM25Index, load_embedder
from duomem_fast.memory.record import Memory
from duomem_fast.memory.tasks import infer_task_type, normalize_task

FORMAT, VERSION = "duomem-memory-bank", 1


class MemoryBank:
    """Procedural memories with top-k retrieval by task sentence. `embedder`: 'auto' | 'minilm-l6-v2' | 'bm25'."""

    def __init__(self, memories: list[Memory] | None = None, embedder: str = "auto", meta: dict | None = None):
        self.memories: list[Memory] = []
        self.meta = dict(meta or {})
        self._embedder = load_embedder(embedder)
        self._emb: torch.Tensor | None = None        # (N, D) float32, unit rows; None = stale
        self._bm25: BM25Index | None = None
        self._ids: set[str] = set()
        self.retrieval_seconds, self.retrievals = 0.0, 0
        self.add(memories or [])

    @property
    def embedder_name(self) -> str:
        return self._embedder.name if self._embedder is not None else BM25

    def __len__(self) -> int:
        return len(self.memories)

    def __iter__(self):
        return iter(self.memories)

    def add(self, memories: Memory | list[Memory]) -> int:
        """Add memories (ids already present are skipped). Returns how many were added."""
        new = [m for m in ([memories] if isinstance(memories, Memory) else memories) if m.id not in self._ids]
        if not new:
            return 0
        for m in new:
            self._ids.add(m.id)
        if self._emb is not None and self._embedder is not None:
            self._emb = torch.cat([self._emb, self._embed([m.task for m in new])])
        self.memories.extend(new)
        self._bm25 = None
        return len(new)

    def content_sha(self) -> str:
        h = hashlib.sha256()
        for m in self.memories:
            h.update(json.dumps(m.to_dict(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    # ---- retrieval ---------------------------------------------------------------------------------------
    def retrieve(self, task: str, k: int = 4, task_type: str | None = None, type_boost: float = 1.0) -> list[Memory]:
        """The k memories best matching `task` (best first)."""
        return [m for m, _ in self.search(task, k, task_type, type_boost)]

    def search(self, task: str, k: int = 4, task_type: str | None = None,
               type_boost: float = 1.0) -> list[tuple[Memory, float]]:
        """(memory, score) for the top k; score = similarity (+ type_boost when the task type matches)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if not task or not task.strip():
            raise ValueError(f"empty task sentence {task!r}")
        t0 = time.perf_counter()
        scores = self._similarity(normalize_task(task))
        qtype = task_type or infer_task_type(task)
        if qtype and type_boost:
            scores = scores + type_boost * np.array([m.task_type == qtype for m in self.memories], dtype=np.float64)
        top = np.argsort(-scores, kind="stable")[:k]
        self.retrieval_seconds += time.perf_counter() - t0
        self.retrievals += 1
        return [(self.memories[i], float(scores[i])) for i in top]

    def _similarity(self, query: str) -> np.ndarray:
        if not self.memories:
            return np.zeros(0)
        if self._embedder is None:
            if self._bm25 is None:
                self._bm25 = BM25Index([normalize_task(m.task) for m in self.memories])
            s = self._bm25.scores(query)
            return s / s.max() if s.max() > 0 else s          # into [0, 1] so type_boost means the same
        q = self._embed([query])[0]
        return (self.embeddings() @ q).double().numpy()

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return self._embedder.embed([normalize_task(t) for t in texts]).float()

    def embeddings(self) -> torch.Tensor:
        """(N, D) unit rows of the memories' task sentences (computed once, then kept)."""
        if self._embedder is None:
            raise ValueError("this bank ranks with BM25; it has no embeddings")
        if self._emb is None or len(self._emb) != len(self.memories):
            self._emb = self._embed([m.task for m in self.memories])
        return self._emb

    # ---- files -------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `path` (JSONL) and, with a dense embedder, `path.with_suffix('.safetensors')`; atomic renames."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sha = self.content_sha()
        header = {"format": FORMAT, "version": VERSION, "count": len(self), "content_sha": sha, "meta": self.meta}
        lines = [json.dumps(header)] + [json.dumps(m.to_dict(), ensure_ascii=False) for m in self.memories]
        _atomic_write(path, ("\n".join(lines) + "\n").encode())
        if self._embedder is not None and self.memories:
            tmp = path.with_suffix(".safetensors.tmp")
            save_file({"embeddings": self.embeddings().half().contiguous()}, str(tmp),
                      metadata={"embedder": self._embedder.name, "content_sha": sha})
            os.replace(tmp, path.with_suffix(".safetensors"))
        return path

    @classmethod
    def load(cls, path: str | Path, embedder: str = "auto") -> "MemoryBank":
        path = Path(path)
        if path.is_dir():
            path = path / "bank.jsonl"
        if not path.exists():
            raise ValueError(f"memory bank {path} does not exist")
        header, memories = _read_bank(path)
        bank = cls(memories, embedder=embedder, meta=header.get("meta", {}))
        bank._load_embeddings(path.with_suffix(".safetensors"), header.get("content_sha"))
        return bank

    def _load_embeddings(self, path: Path, sha: str | None) -> None:
        if self._embedder is None or not path.exists():
            return
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("embedder") != self._embedder.name or meta.get("content_sha") != sha or sha != self.content_sha():
            return                                               # stale cache: embeddings() recomputes
        emb = load_file(str(path))["embeddings"].float()
        if emb.shape[0] == len(self.memories):
            self._emb = emb


def _read_bank(path: Path) -> tuple[dict, list[Memory]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:1 is not JSON: {e}") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a memory bank (first line lacks format={FORMAT!r})")
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: bank version {header.get('version')!r} unsupported (this code reads {VERSION})")
    memories = []
    for i, line in enumerate(lines[1:], start=2):
        if line.strip():
            try:
                memories.append(Memory.from_dict(json.loads(line), where=f"{path}:{i}"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i} is not JSON: {e}") from None
    return header, memories


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
