"""The checkout's top-level `kernels/` (installed as duomem_fast.kernels) never stands in for Hugging Face's `kernels`
package, which transformers imports when it is installed (a transformers dependency since 5.25)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _import_kernels_from_root(extra_path: Path | None) -> str:
    env_path = [str(extra_path)] if extra_path else []
    code = "import sys; sys.path[1:1] = sys.argv[1:]; import kernels; print(getattr(kernels, 'WHO', kernels.__file__))"
    out = subprocess.run([sys.executable, "-c", code, *env_path], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_an_installed_kernels_package_wins_over_the_checkout_dir(tmp_path):
    fake = tmp_path / "site" / "kernels"  # stands for site-packages/kernels: on sys.path after the checkout root
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("WHO = 'hugging face kernels'\n")
    assert _import_kernels_from_root(tmp_path / "site") == "hugging face kernels"


def test_without_one_the_checkout_dir_imports_as_before():
    from importlib.metadata import PackageNotFoundError, version

    try:
        pytest.skip(f"Hugging Face's kernels {version('kernels')} is installed here: the test above covers that case")
    except PackageNotFoundError:
        pass
    assert _import_kernels_from_root(None) == str(ROOT / "kernels" / "__init__.py")
