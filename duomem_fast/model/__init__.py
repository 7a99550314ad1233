"""HF config + weights -> compact Llama-family decoder."""
from duomem_fast.model.loader import resolve_model_dir
from duomem_fast.model.testing import make_tiny_model

__all__ = ["resolve_model_dir", "make_tiny_model"]
