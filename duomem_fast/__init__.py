"""duomem-fast: fast, measured DuoMem-style student agents."""
__version__ = "0.1.0"

from duomem_fast.engine import Conversation, Engine, Prefix, Session, Stats
from duomem_fast.model import make_tiny_model, resolve_model_dir

__all__ = ["Engine", "Session", "Prefix", "Conversation", "Stats", "resolve_model_dir", "make_tiny_model"]
