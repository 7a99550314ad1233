"""Copy a pipeline's products into the package's shipped defaults (`duomem_fast/assets/`).

    python -m duomem_fast.distill.ship RUN_DIR [--assets DIR]
The adapter's tensors are stored in fp16 (half the bytes; both loaders upcast on load), the adapter config,
training.json and the bank (JSONL + embeddings) are copied as they are, and pipeline.json is kept as
`assets/pipeline.json` for the card.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from duomem_fast.memory.defaults import ASSETS


def ship(run_dir: str | Path, assets: str | Path = ASSETS) -> dict:
    """Install the run's final adapter (its last DAgger round's, else RUN_DIR/adapter) and RUN_DIR/bank.jsonl as the
    shipped defaults; returns their sizes in bytes."""
    from duomem_fast.distill.pipeline import final_adapter
    run, assets = Path(run_dir), Path(assets)
    adapter, bank = final_adapter(run), run / "bank.jsonl"
    for needed in (adapter / "adapter_config.json", adapter / "adapter_model.safetensors", bank):
        if not needed.exists():
            raise ValueError(f"cannot ship {run}: {needed} is missing (run the pipeline to the end first)")
    if not json.loads((adapter / "training.json").read_text()).get("done"):
        raise ValueError(f"cannot ship {run}: training is not done (see {adapter / 'training.json'})")
    dst = assets / "adapter"
    dst.mkdir(parents=True, exist_ok=True)
    weights = {k: v.half().contiguous() for k, v in load_file(str(adapter / "adapter_model.safetensors")).items()}
    save_file(weights, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    for name in ("adapter_config.json", "training.json"):
        shutil.copy(adapter / name, dst / name)
    for src in (bank, bank.with_suffix(".safetensors"), run / "pipeline.json"):
        if src.exists():
            shutil.copy(src, assets / src.name)
    return {p.relative_to(assets).as_posix(): p.stat().st_size for p in sorted(assets.rglob("*")) if p.is_file()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--assets", default=str(ASSETS))
    args = ap.parse_args(argv)
    for name, size in ship(args.run_dir, args.assets).items():
        print(f"{size:>10}  {name}")


if __name__ == "__main__":
    main()
