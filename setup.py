"""Build for duomem-fast.

Packages: everything under duomem_fast/, plus the repo-root `kernels/` installed as `duomem_fast.kernels`
(a top-level `kernels` would collide with the unrelated PyPI package of that name).

Native ops: csrc/*.cpp build into `duomem_fast._C` with ninja via torch.utils.cpp_extension. The CUDA sources
(csrc/*.cu) join the build only where torch has CUDA and nvcc is present. DUOMEM_NO_NATIVE=1 skips the native
build entirely; the package then runs on the pure-torch reference ops (duomem_fast.ops says so once).
"""
import glob
import os

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["duomem_fast", "duomem_fast.*"]) + ["duomem_fast.kernels"]
PACKAGE_DIR = {"duomem_fast": "duomem_fast", "duomem_fast.kernels": "kernels"}


def native_extensions():
    if os.environ.get("DUOMEM_NO_NATIVE", "0") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpp = sorted(glob.glob("csrc/*.cpp"))
    if not cpp:
        return [], {}
    cxx = ["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fno-finite-math-only", "-DNDEBUG"]
    if os.environ.get("DUOMEM_PORTABLE", "0") == "1":  # wheels for other machines: the AVX-512 intrinsics paths
        cxx = [f for f in cxx if f != "-march=native"] + ["-mavx2", "-mfma"]  # compile out, portable loops remain
    cu = sorted(glob.glob("csrc/*.cu"))
    # A CUDA build of torch plus nvcc is enough (no GPU needed to build); CPU-only torch never builds the .cu files.
    with_cuda = bool(cu) and torch.version.cuda is not None and CUDA_HOME is not None
    nvcc = ["-O3", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
    kw = dict(name="duomem_fast._C", sources=cpp, extra_link_args=["-fopenmp"])
    if with_cuda:
        ext = CUDAExtension(sources=cpp + cu, extra_compile_args={"cxx": cxx + ["-DWITH_CUDA"], "nvcc": nvcc},
                            **{k: v for k, v in kw.items() if k != "sources"})
    else:
        ext = CppExtension(extra_compile_args=cxx, **kw)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = native_extensions()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=ext_modules, cmdclass=cmdclass)
