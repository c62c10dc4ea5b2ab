"""Build script: the Python package plus the optional C++/CUDA extension ``fastrecur._C``.

The extension's build is decided by ``csrc/build_config.py`` (CPU part always when a compiler is found,
CUDA part when nvcc and a CUDA build of torch are present). ``FASTRECUR_NO_EXT=1`` skips it; the package
then runs on its eager path and ``fastrecur.backends()`` says why the C++ backend is missing.
"""
from setuptools import setup

setup(
    packages=[
        "fastrecur",
        "fastrecur.core",
        "fastrecur.nn",
        "fastrecur.ops",
        "fastrecur.models",
        "fastrecur.kernels",
    ],
    package_dir={"fastrecur.kernels": "kernels"},
)
