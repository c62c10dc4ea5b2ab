"""Every kernels module's ``compile_targets()``: the entries match the kernel signatures, and every entry compiles
with the real Triton compiler for Hopper (sm_90a) and Ampere (sm_80) without spills -- no GPU needed, and the
interpreter accepts code the compiler rejects. The compile runs once, in one subprocess without
``TRITON_INTERPRET`` (this process has it set), through ``fastrecur.kernel_report.kernel_rows``."""

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import tempfile

import pytest
import triton

import fastrecur.kernels
from fastrecur.kernel_report import KERNEL_MODULES, TARGETS

MODULES = sorted(m.name for m in pkgutil.iter_modules(fastrecur.kernels.__path__) if not m.name.startswith("_"))
_BINDIR = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def test_kernel_report_covers_every_module():
    assert sorted(KERNEL_MODULES) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_compile_targets_match_kernel_signatures(module):
    """Every entry names each kernel argument exactly once (signature or constexpr)."""
    for spec in importlib.import_module(f"fastrecur.kernels.{module}").compile_targets():
        names = list(spec["signature"]) + list(spec["constexprs"])
        assert sorted(names) == sorted(spec["fn"].arg_names), spec["name"]
        assert set(spec["divisible_by_16"]) <= set(spec["signature"]), spec["name"]


@pytest.fixture(scope="module")
def compiled_rows():
    """``kernel_rows()`` for every module and target, from one subprocess without the interpreter."""
    if not all(os.path.exists(os.path.join(_BINDIR, b)) for b in ("ptxas", "cuobjdump", "nvdisasm")):
        pytest.skip("this triton has no bundled ptxas/cuobjdump/nvdisasm")
    code = "import json; from fastrecur.kernel_report import kernel_rows; print(json.dumps(kernel_rows()))"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Run outside the repository: from its root, `python -c` would import the source tree (which lacks the
    # fastrecur.kernels mapping of an installed package) instead of the installed fastrecur.
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=tempfile.gettempdir()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MODULES)
def test_compiles_for_hopper_and_ampere_without_spills(module, compiled_rows):
    """Each entry compiles for both targets (a cubin with resource facts, no error) without spills: no local
    memory and no stack frame (ptxas spills registers to the stack: LOCAL stays 0 then)."""
    rows = [r for r in compiled_rows if r["module"] == module]
    expected = {
        (s["name"], t)
        for s in importlib.import_module(f"fastrecur.kernels.{module}").compile_targets()
        for t in TARGETS
    }
    assert {(r.get("kernel"), r.get("target")) for r in rows} == expected, rows
    for r in rows:
        assert "error" not in r, r
        assert r["registers"] > 0 and r["spill_bytes"] == 0 and r["stack_bytes"] == 0, r
