"""KV cache, prefix store, sessions, chat, sampling, batching."""
from duomem_fast.engine.chat import Conversation
from duomem_fast.engine.engine import Engine
from duomem_fast.engine.kv import Prefix
from duomem_fast.engine.session import Session
from duomem_fast.engine.stats import Stats

__all__ = ["Engine", "Session", "Prefix", "Conversation", "Stats"]
