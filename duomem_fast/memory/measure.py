"""Retrieval quality and cost on a suite's task sentences: does top-k come back with the query's task type?

    python -m duomem_fast.memory.measure --bank BANK.jsonl --data /work/data/alfworld --split valid_unseen
prints, per embedder and scoring (pure cosine / type-aware), the share of retrieved memories whose task type
equals the query's, for k = 1 and 4, and the mean milliseconds per retrieval; `--json` writes the table.
Queries come from each game's traj_data.json (turk_annotations task_desc) and its task_type.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from duomem_fast.memory.bank import MemoryBank


def suite_queries(data_root: str | Path, split: str) -> list[tuple[str, str]]:
    """[(task_type, task sentence)] for the playable games of a split."""
    from duomem_fast.alfworld.games import list_games, read_json
    out = []
    for game in list_games(data_root, split):
        traj = read_json(game.traj_path, ("task_type",))
        anns = traj.get("turk_annotations", {}).get("anns", [])
        if anns and anns[0].get("task_desc"):
            out.append((game.task_type, anns[0]["task_desc"]))
    return out


def type_accuracy(bank: MemoryBank, queries: list[tuple[str, str]], k: int, type_boost: float) -> tuple[float, float]:
    """(share of retrieved memories with the query's task type, ms per retrieval)."""
    if not queries or k < 1:
        raise ValueError(f"need queries and k >= 1 (got {len(queries)} queries, k={k})")
    hits, t0 = 0, time.perf_counter()
    for task_type, sentence in queries:
        hits += sum(m.task_type == task_type for m in bank.retrieve(sentence, k, type_boost=type_boost))
    ms = 1000 * (time.perf_counter() - t0) / len(queries)
    return hits / (k * len(queries)), ms


def measure(bank_path: str | Path, queries: list[tuple[str, str]], embedders=("minilm-l6-v2", "bm25")) -> list[dict]:
    rows = []
    for emb in embedders:
        bank = MemoryBank.load(bank_path, embedder=emb)
        bank.retrieve(queries[0][1], 1)                   # warm-up: embeddings, model load
        for boost, name in ((0.0, "cosine" if emb != "bm25" else "bm25"), (1.0, "type-aware")):
            for k in (1, 4):
                acc, ms = type_accuracy(bank, queries, k, boost)
                rows.append({"embedder": emb, "scoring": name, "k": k, "type_accuracy": round(acc, 4),
                             "ms_per_retrieval": round(ms, 2), "memories": len(bank), "queries": len(queries)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="valid_unseen")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    rows = measure(args.bank, suite_queries(args.data, args.split))
    print(f"{'embedder':14} {'scoring':11} {'k':>2} {'type acc':>9} {'ms/query':>9}  memories queries")
    for r in rows:
        print(f"{r['embedder']:14} {r['scoring']:11} {r['k']:>2} {r['type_accuracy']:>9.3f} {r['ms_per_retrieval']:>9.2f}"
              f"  {r['memories']:>8} {r['queries']:>7}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
