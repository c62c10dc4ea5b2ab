"""How ``fastrecur._C`` is built: sources, flags and the CPU/CUDA decision, shared by ``setup.py`` and the
scripts in ``scripts/`` (so every build uses the same flags).

- ``FASTRECUR_NO_EXT=1``: no extension at all (the package runs on its eager/Triton paths).
- The CPU part is always built otherwise: one translation unit, ``csrc/bindings.cpp`` (op registration), with
  the logic in the headers it includes (``HEADERS``; a change to one rebuilds it).
- The CUDA part (``csrc/kernels.cu``) is added when torch is a CUDA build (``torch.version.cuda``) and nvcc is
  found (``CUDA_HOME``/``CUDA_PATH``/``/usr/local/cuda``); ``FASTRECUR_NO_CUDA=1`` leaves it out.
- The CPU kernels are compiled for one x86 instruction set, ``FASTRECUR_CPU_ISA`` = ``auto`` (default: the
  best this machine has, as torch detects it), ``avx512_bf16`` (AVX-512 with the BF16 conversions),
  ``avx512``, ``avx2`` or ``default`` (portable scalar at::vec).
  The choice is written to ``fastrecur/_build_info.py``; ``fastrecur._ext`` reads it before loading the
  library and refuses (with the reason) on a CPU that lacks those instructions, instead of crashing.
- Any compile or link error fails the build (nothing here catches it): a broken extension must never be
  installed silently. Without torch importable in the build environment the build stops with a message
  (install with ``pip install --no-build-isolation`` or set ``FASTRECUR_NO_EXT=1``).
"""

from __future__ import annotations

import os
import platform
import re
import shutil

# torch.utils.cpp_extension guesses CUDA_HOME as the parent of the folder holding the first `nvcc` on PATH;
# a wrapper script such as /usr/local/bin/nvcc then gives /usr/local, which has no CUDA headers. Pick the
# real toolkit first (before torch's module is imported and reads the variable).
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
    for _home in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(_home, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = _home
            break
    else:
        _nvcc = shutil.which("nvcc")
        _root = os.path.dirname(os.path.dirname(os.path.realpath(_nvcc))) if _nvcc else None
        if _root and os.path.exists(os.path.join(_root, "include", "cuda.h")):
            os.environ["CUDA_HOME"] = _root

CSRC = os.path.dirname(os.path.abspath(__file__))
CPP_SOURCES = ["bindings.cpp"]
# Headers compiled into bindings.cpp (setuptools' `depends`: rebuilt when one changes, shipped in an sdist).
HEADERS = [
    "checks.h",
    "cpu_kernels.h",
    "cuda_api.h",
    "dispatch.h",
    "elementwise_ops.h",
    "isa_info.h",
    "loop.h",
    "planner.h",
    "program.h",
    "workspace.h",
]
CUDA_SOURCES = ["kernels.cu"]
# Ampere and Hopper SASS, plus Hopper PTX so newer GPUs can JIT the kernels.
CUDA_ARCHS = [("80", "sm_80"), ("90", "sm_90")]
CXX_FLAGS = ["-O3"]  # the language standard is torch's choice (C++20 for torch 2.14, C++17 before)
# at::parallel_for is inline: without OpenMP in *this* translation unit the fused CPU kernels run on one
# thread while torch's GEMMs use all of them. Linked as libgomp.so.1, the runtime torch itself loads (same
# soname), so the two share one thread pool and torch.set_num_threads applies to both. FASTRECUR_NO_OPENMP=1
# leaves it out (e.g. for a compiler without OpenMP).
OPENMP_FLAGS = ["-fopenmp"]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def gencode_flags() -> list[str]:
    flags = []
    for num, sm in CUDA_ARCHS:
        flags += ["-gencode", f"arch=compute_{num},code={sm}"]
    flags += ["-gencode", f"arch=compute_{CUDA_ARCHS[-1][0]},code=compute_{CUDA_ARCHS[-1][0]}"]
    return flags


def nvcc_flags() -> list[str]:
    return ["-O3", "--use_fast_math" if _truthy("FASTRECUR_FAST_MATH") else "-lineinfo"] + gencode_flags()


def cuda_library_includes() -> list[str]:
    """Include dirs of the pip-installed CUDA libraries (``nvidia/cu13/include``, ...): torch's CUDA headers
    include cusparse.h/cublas_v2.h, which a bare toolkit install may lack."""
    dirs = []
    try:
        import nvidia  # namespace package installed with CUDA builds of torch
    except ImportError:
        return dirs
    for root in getattr(nvidia, "__path__", []):
        for sub in sorted(os.listdir(root)):
            inc = os.path.join(root, sub, "include")
            if re.fullmatch(r"cu\d+", sub) and os.path.isdir(inc):
                dirs.append(inc)
    return dirs


def cuda_home() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME


def want_cuda() -> tuple[bool, str]:
    """(build the CUDA part?, reason)."""
    import torch

    if _truthy("FASTRECUR_NO_CUDA"):
        return False, "FASTRECUR_NO_CUDA is set"
    if not torch.version.cuda:
        return False, f"torch {torch.__version__} is not a CUDA build"
    home = cuda_home()
    if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"nvcc in {home}, torch CUDA {torch.version.cuda}"


# at::vec picks its implementation at compile time from these macros: without them it is the scalar DEFAULT
# one (about 4x slower). The AVX-512 set is ATen's own (its AVX512 kernels are built with the same flags).
CPU_ISA_FLAGS = {
    # AVX-512 with the BF16 conversion instructions (Cooper Lake, Sapphire Rapids and later; AMD Zen 4): one
    # instruction per 16 fp32 -> bf16 roundings in the CPU kernels instead of ten.
    "avx512_bf16": [
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mavx512bf16",
        "-mfma",
        "-mf16c",
        "-DCPU_CAPABILITY=AVX512",
        "-DCPU_CAPABILITY_AVX512",
    ],
    "avx512": [
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mfma",
        "-mf16c",
        "-DCPU_CAPABILITY=AVX512",
        "-DCPU_CAPABILITY_AVX512",
    ],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": [],
}
# CPU features (torch.cpu.get_capabilities() keys) each instruction set needs at run time.
CPU_ISA_NEEDS = {
    "avx512_bf16": ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq", "avx512_bf16", "fma3", "f16c"),
    "avx512": ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq", "fma3", "f16c"),
    "avx2": ("avx2", "fma3", "f16c"),
    "default": (),
}


def cpu_capabilities() -> dict:
    """CPU features as torch.cpu.get_capabilities() names them. Older torch releases lack that function: their
    at::vec capability (torch.backends.cpu.get_cpu_capability(), "AVX512"/"AVX2"/...) stands in for it."""
    import torch

    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return get()
    isas = {"AVX512": ("avx512", "avx2"), "AVX2": ("avx2",)}.get(torch.backends.cpu.get_cpu_capability(), ())
    return {f: True for isa in isas for f in CPU_ISA_NEEDS[isa]}


def cpu_isa() -> tuple[str, str]:
    """(instruction set the CPU kernels are compiled for, reason). FASTRECUR_CPU_ISA overrides the detection
    (``avx2`` or ``default`` builds a library that also runs on older CPUs than the build machine)."""
    want = os.environ.get("FASTRECUR_CPU_ISA", "auto").strip().lower() or "auto"
    if want != "auto":
        if want not in CPU_ISA_FLAGS:
            raise ValueError(f"FASTRECUR_CPU_ISA must be auto, {', '.join(CPU_ISA_FLAGS)}; got {want!r}")
        return want, "FASTRECUR_CPU_ISA"
    if platform.machine() not in ("x86_64", "AMD64"):
        return "default", f"{platform.machine()} is not x86-64"
    caps = cpu_capabilities()
    for isa in ("avx512_bf16", "avx512", "avx2"):
        if all(caps.get(f, False) for f in CPU_ISA_NEEDS[isa]):
            return isa, "the best this CPU supports"
    return "default", "this CPU has neither AVX-512 nor AVX2"


def write_build_info(package_dir: str, isa: str) -> None:
    """Record the build's CPU instruction set where ``fastrecur._ext`` reads it before loading the library."""
    path = os.path.join(package_dir, "_build_info.py")
    text = (
        '"""Written by csrc/build_config.py when fastrecur._C is built; read by fastrecur._ext."""\n'
        f"CPU_ISA = {isa!r}\nCPU_ISA_NEEDS = {CPU_ISA_NEEDS[isa]!r}\n"
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def extension_kwargs(with_cuda: bool, rel_to: str | None = None) -> dict:
    """Keyword arguments for CppExtension/CUDAExtension or torch.utils.cpp_extension.load.

    rel_to: make source paths relative to this directory (setuptools wants paths relative to setup.py)."""
    srcs = CPP_SOURCES + (CUDA_SOURCES if with_cuda else [])
    paths = [os.path.join(CSRC, s) for s in srcs]
    if rel_to is not None:
        paths = [os.path.relpath(p, rel_to) for p in paths]
    isa = cpu_isa()[0]
    # FASTRECUR_CPU_ISA as a bare token: quotes do not survive every build tool.
    cxx = list(CXX_FLAGS) + CPU_ISA_FLAGS[isa] + [f"-DFASTRECUR_CPU_ISA={isa}"]
    link = []
    if not _truthy("FASTRECUR_NO_OPENMP"):
        cxx += OPENMP_FLAGS
        link += OPENMP_FLAGS
    depends = [os.path.join(CSRC, h) for h in HEADERS]
    if rel_to is not None:
        depends = [os.path.relpath(p, rel_to) for p in depends]
    kwargs = {
        "sources": paths,
        "extra_compile_args": {"cxx": cxx},
        "include_dirs": [CSRC],
        "extra_link_args": link,
        "depends": depends,
    }
    if with_cuda:
        kwargs["extra_compile_args"]["cxx"].append("-DFASTRECUR_WITH_CUDA")
        kwargs["extra_compile_args"]["nvcc"] = nvcc_flags()
        kwargs["include_dirs"] = [CSRC] + cuda_library_includes()
    return kwargs


def build_cpu_variant(
    build_dir: str,
    isa: str | None = None,
    extra_cflags: tuple = (),
    extra_ldflags: tuple = (),
    drop_cflags: tuple = (),
    name: str = "fastrecur_C_variant",
) -> str:
    """Build the CPU part of the extension with other flags into ``build_dir`` (torch.utils.cpp_extension.load,
    same sources and flags as setup.py otherwise) and return the library's path, to be loaded with
    ``FASTRECUR_EXT_LIBRARY`` (scripts/asan_check.sh: sanitizers; tests/test_isa_variants.py: the instruction
    sets this machine's own build does not use). ``isa``: one of CPU_ISA_FLAGS (None: as setup.py picks it)."""
    from torch.utils.cpp_extension import load

    if isa is not None and isa not in CPU_ISA_FLAGS:
        raise ValueError(f"isa must be one of {', '.join(CPU_ISA_FLAGS)}, got {isa!r}")
    saved = os.environ.get("FASTRECUR_CPU_ISA")
    try:
        if isa is not None:
            os.environ["FASTRECUR_CPU_ISA"] = isa
        kw = extension_kwargs(with_cuda=False)
    finally:
        if saved is None:
            os.environ.pop("FASTRECUR_CPU_ISA", None)
        else:
            os.environ["FASTRECUR_CPU_ISA"] = saved
    os.makedirs(build_dir, exist_ok=True)
    cflags = [f for f in kw["extra_compile_args"]["cxx"] if f not in drop_cflags] + list(extra_cflags)
    load(
        name=name,
        sources=kw["sources"],
        extra_include_paths=kw["include_dirs"],
        extra_cflags=cflags,
        extra_ldflags=kw["extra_link_args"] + list(extra_ldflags),
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )
    return os.path.join(build_dir, f"{name}.so")


def get_extensions(setup_dir: str):
    """(ext_modules, cmdclass) for setup(); empty when FASTRECUR_NO_EXT is set."""
    if _truthy("FASTRECUR_NO_EXT"):
        print("fastrecur: FASTRECUR_NO_EXT is set, not building the C++/CUDA extension fastrecur._C")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as e:  # fail loudly: a silently missing extension is worse than a failed install
        raise RuntimeError(
            "fastrecur: building the extension fastrecur._C needs torch importable at build time "
            "(pip install --no-build-isolation ...), or set FASTRECUR_NO_EXT=1 to skip it: " + str(e)
        ) from e
    os.environ.setdefault("MAX_JOBS", "2")
    with_cuda, why = want_cuda()
    isa, isa_why = cpu_isa()
    print(
        f"fastrecur: building fastrecur._C (CPU{' + CUDA' if with_cuda else ''}; CUDA: {why}; "
        f"CPU kernels for {isa}: {isa_why})"
    )
    write_build_info(os.path.join(setup_dir, "fastrecur"), isa)
    kwargs = extension_kwargs(with_cuda, rel_to=setup_dir)
    ext = (CUDAExtension if with_cuda else CppExtension)("fastrecur._C", **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}
