"""duomem-fast: fast, measured DuoMem-style student agents."""
__version__ = "0.1.0"
