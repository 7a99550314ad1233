"""Placeholder: filled below."""
class EnginePolicy:  # pragma: no cover
    pass
