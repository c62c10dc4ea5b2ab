"""The CPU kernels built for every x86 instruction set this machine can run, not only the one its own build
picked (csrc/build_config.py: avx512_bf16, avx512, avx2, default): each variant is compiled in a temporary
directory (build_config.build_cpu_variant, in a subprocess: loading a second build of the ops into this process
would clash with the installed one) and tests/test_cpp_extension.py and tests/test_cpp_models.py run against it
(FASTRECUR_EXT_LIBRARY). The kernels have one code path per instruction set (AVX-512 even/odd bf16 pairs, the
AVX-512 path without the BF16 conversions, AVX2, portable), and a user's machine may take any of them.

About 25 s of compiling per variant on 2 cores. FASTRECUR_SKIP_ISA_VARIANTS=1 skips them; they are skipped
where ninja or a C++ compiler is missing (torch.utils.cpp_extension.load needs both; `make test` installs ninja).
"""

import os
import shutil
import subprocess
import sys

import pytest

from fastrecur import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The build runs with this interpreter's bin folder first on PATH: a venv's ninja (pip install ninja) is found
# even when the venv is not activated.
BUILD_PATH = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
sys.path.insert(0, os.path.join(ROOT, "csrc"))
import build_config  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not _ext.available(), reason="the extension is not built"),
    pytest.mark.skipif(os.environ.get("FASTRECUR_SKIP_ISA_VARIANTS") == "1", reason="FASTRECUR_SKIP_ISA_VARIANTS=1"),
    pytest.mark.skipif(bool(os.environ.get("FASTRECUR_EXT_LIBRARY")), reason="already testing a variant build"),
    pytest.mark.skipif(
        shutil.which("ninja", path=BUILD_PATH) is None or shutil.which("c++") is None, reason="needs ninja and c++"
    ),
]


def runnable_variants():
    """The instruction sets this CPU supports, except the one the installed build uses (the rest of the suite
    tests that one)."""
    caps = build_config.cpu_capabilities()
    own = _ext.cpu_isa() if _ext.available() else None
    return [
        isa
        for isa, needs in build_config.CPU_ISA_NEEDS.items()
        if isa != own and all(caps.get(f, False) for f in needs)
    ]


@pytest.mark.parametrize("isa", runnable_variants() or [pytest.param(None, marks=pytest.mark.skip("none to test"))])
def test_kernels_built_for(isa, tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import build_config; "
            "print(build_config.build_cpu_variant(sys.argv[2], isa=sys.argv[3]))",
            os.path.join(ROOT, "csrc"),
            str(tmp_path / "build"),
            isa,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=BUILD_PATH),
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    lib = build.stdout.strip().splitlines()[-1]
    env = dict(os.environ, FASTRECUR_EXT_LIBRARY=lib, FASTRECUR_REQUIRE_EXT="1")
    probe = subprocess.run(
        [sys.executable, "-c", "from fastrecur import _ext; print(_ext.cpu_isa())"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert probe.stdout.strip() == isa, probe.stderr[-2000:]  # the tests below really run this variant
    tests = [os.path.join(ROOT, "tests", f) for f in ("test_cpp_extension.py", "test_cpp_models.py")]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
