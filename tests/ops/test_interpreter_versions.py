"""The Triton interpreter's version check: triton <= 3.6 cannot run the kernels under numpy >= 2.4 (it converts
1-element arrays to ints, which numpy 2.4 refuses). The version pairs below were each run on this project's
kernel tests (tests/ops/test_add_rms_norm.py): the failing one failed there, the others passed."""

import pytest
import torch

from fastrecur import backend
from fastrecur.backend import triton as triton_backend
from fastrecur.ops import _validate
from fastrecur.ops.add_rms_norm import add_rms_norm


@pytest.mark.parametrize(
    "triton_v,numpy_v,fails",
    [
        ("3.6.0", "2.4.6", True),
        ("3.6.0", "2.3.5", False),
        ("3.7.0", "2.4.6", False),
        ("3.8.0", "2.4.6", False),
        ("3.6.0+git1234", "2.4.0rc1", True),
    ],
)
def test_interpreter_incompatibility(triton_v, numpy_v, fails):
    why = _validate.interpreter_incompatibility(triton_v, numpy_v)
    assert (why is not None) == fails
    if fails:
        assert triton_v in why and numpy_v in why


def test_incompatible_interpreter_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(_validate, "installed_interpreter_incompatibility", lambda: "the interpreter is too old")
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="interpreter is too old"):
        add_rms_norm(x, x.clone())
    triton_backend._probe.cache_clear()
    try:
        if not torch.cuda.is_available():
            assert backend.backends()["triton"] == (False, "the interpreter is too old")
    finally:
        triton_backend._probe.cache_clear()
