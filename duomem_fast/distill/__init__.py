"""Distillation: teacher trajectories -> memory bank -> LoRA adapter (see pipeline.run_pipeline)."""
