"""Triton kernels and their pure-torch references (installed as `duomem_fast.kernels`).

Import the Triton launchers lazily (`from duomem_fast.kernels.lora_linear import lora_linear`): triton is an
optional dependency, the references in `reference.py` are not.
"""
