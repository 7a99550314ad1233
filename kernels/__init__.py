"""Triton kernels and their pure-torch references (installed as `duomem_fast.kernels`).

Import the Triton launchers lazily (`from duomem_fast.kernels.lora_linear import lora_linear`): triton is an
optional dependency, the references in `reference.py` are not.
"""
if __name__ == "kernels":
    # Imported as a top-level package: the checkout's root is on sys.path (`python -m ...` run from it). The name
    # belongs to Hugging Face's `kernels`, a dependency of transformers since 5.25, which transformers imports when it
    # is installed; if it is, this directory must not stand in for it, so load that package in its place (the import
    # system returns whatever sys.modules holds under the name once this body has run).
    import importlib.util as _util
    import sys as _sys
    from importlib.machinery import PathFinder as _PathFinder
    from pathlib import Path as _Path

    _root = _Path(__file__).resolve().parent.parent
    _spec = _PathFinder.find_spec("kernels", [p for p in _sys.path if _Path(p or ".").resolve() != _root])
    if _spec is not None and _spec.loader is not None:
        _module = _util.module_from_spec(_spec)
        _sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
