"""Build script: the Python package plus the optional C++/CUDA extension ``fastrecur._C``.

The extension's build is decided by ``csrc/build_config.py`` (CPU part always when a compiler is found,
CUDA part when nvcc and a CUDA build of torch are present). ``FASTRECUR_NO_EXT=1`` skips it; the package
then runs on its eager path and ``fastrecur.backends()`` says why the C++ backend is missing.
A failed extension build fails the install.
"""

import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "csrc"))
from build_config import get_extensions  # noqa: E402

ext_modules, cmdclass = get_extensions(HERE)

setup(
    # Every package under fastrecur/, plus the Triton kernels shipped as fastrecur.kernels (not a top-level
    # ``kernels`` module, which would clash with other packages).
    packages=find_packages(include=["fastrecur", "fastrecur.*"]) + ["fastrecur.kernels"],
    package_dir={"fastrecur.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
