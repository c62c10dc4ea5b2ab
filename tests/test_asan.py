"""The sanitizer run of the native extension (scripts/asan_check.sh: builds the CPU part of fastrecur._C with
AddressSanitizer + UBSan and runs tests/test_cpp_extension.py against it; fails on any finding).

Opt-in because it rebuilds the extension (a few minutes on 2 cores): runs only with FASTRECUR_ASAN=1, e.g.
``FASTRECUR_ASAN=1 pytest -q tests/test_asan.py``. Needs gcc with libasan/libubsan and the venv's ninja.
"""

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "asan_check.sh")


@pytest.mark.skipif(os.environ.get("FASTRECUR_ASAN") != "1", reason="sanitizer build is opt-in: set FASTRECUR_ASAN=1")
def test_extension_under_asan_and_ubsan():
    env = dict(os.environ)
    env.setdefault("PYTHON", sys.executable)  # the build runs in the interpreter running the tests
    env.pop("FASTRECUR_EXT_LIBRARY", None)
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", SCRIPT, "-x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - t0
    out = proc.stdout[-4000:] + proc.stderr[-8000:]
    print(f"\nasan_check.sh: rc {proc.returncode} in {elapsed:.0f} s\n{proc.stdout[-600:]}")
    assert proc.returncode == 0, out
    assert "asan_check: no sanitizer findings, tests passed" in proc.stdout, out
