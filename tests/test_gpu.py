"""GPU checks, skipped without CUDA (CI has none): the C++ loop's CUDA kernels, its CUDA graphs and the Triton
backend, each against eager PyTorch on the same GPU. ``scripts/gpu_check.sh`` runs this file on a lent GPU.

fp32 matmuls are kept in full precision here (TF32 off) so that 1e-5 of scale is a fair bound for the C++ loop,
whose GEMMs are cuBLAS calls like eager's; the Triton kernels' tl.dot may use TF32, so they get 2e-3.
"""
import pytest
import torch

from fastrecur import _ext
from golden import scale_err
from test_cpp_extension import CASES, EPS, H, cast_case, eager_loop, make_case, rmse, rms, run_both
from test_cpp_models import _twin, train_step_from_same_carry
from test_models import tiny_batch
from test_triton_models import one_head_twins
from test_variants import KINDS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _need_cuda_kernels():
    if not _ext.available() or not _ext.has_cuda_kernels():
        pytest.skip(f"the C++ extension has no CUDA kernels here: {_ext.status()}")


def to_cuda(case):
    steps, states, x, levels, (cos, sin) = case
    mv = (lambda t: None if t is None else t.to(DEV))
    levels = {k: [type(w)(*(t.to(DEV) for t in w)) for w in ws] for k, ws in levels.items()}
    return steps, {k: v.to(DEV) for k, v in states.items()}, x.to(DEV), levels, (mv(cos), mv(sin))


# ----------------------------------------------------------------------------------------------------------
# The fused CUDA elementwise kernels and the loop (csrc/kernels.cu)
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_cuda_kernels_match_eager(dtype):
    _need_cuda_kernels()
    ops = _ext.ops()
    tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    a, b = torch.randn(3, 97, 520, device=DEV, dtype=dtype), torch.randn(3, 97, 520, device=DEV, dtype=dtype)
    out = torch.empty_like(a)
    ops.add_rms_norm(a, b, EPS, out)
    assert scale_err(out, rms(a + b)) <= tol
    gu = torch.randn(5, 97, 2 * 300, device=DEV, dtype=dtype)
    act = torch.empty(5, 97, 300, device=DEV, dtype=dtype)
    ops.swiglu(gu, act)
    ref = (torch.nn.functional.silu(gu[..., :300].float()) * gu[..., 300:].float()).to(dtype)
    assert scale_err(act, ref) <= tol
    aT = torch.randn(104, 3, 520, device=DEV, dtype=dtype)[:97].permute(1, 0, 2)
    bT = torch.randn(97, 3, 520, device=DEV, dtype=dtype).permute(1, 0, 2)
    out3 = torch.empty(3, 97, 520, device=DEV, dtype=dtype)
    ops.add_rms_norm_dim1(aT, bT, EPS, out3)
    s = (aT + bT).float()
    assert scale_err(out3, (s * torch.rsqrt(s.pow(2).mean(1, keepdim=True) + EPS)).to(dtype)) <= tol


@pytest.mark.parametrize("name", CASES)
def test_run_steps_cuda_fp32(name):
    _need_cuda_kernels()
    ref, got = run_both(to_cuda(make_case(name)))
    for k in ref:
        assert got[k].device.type == "cuda"
        assert scale_err(got[k], ref[k]) <= 1e-5, k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", CASES)
def test_run_steps_cuda_low_precision(name, dtype):
    """As on the CPU: error vs the fp32 loop at most ~2x the eager low-precision loop's."""
    _need_cuda_kernels()
    case32 = to_cuda(make_case(name, batch=4))
    ref32 = eager_loop(*case32[:4], *case32[4], H)
    ref16, got16 = run_both(cast_case(case32, dtype))
    for k in ref32:
        err_eager, err_cpp = rmse(ref16[k], ref32[k]), rmse(got16[k], ref32[k])
        assert err_cpp <= 2 * err_eager + 5e-3, (k, err_cpp, err_eager)


# ----------------------------------------------------------------------------------------------------------
# Whole models on the GPU: cpp (with and without CUDA graphs) and triton against eager
# ----------------------------------------------------------------------------------------------------------

def _steps(model, batch, carry, n=3):
    outs = []
    with torch.no_grad():
        for _ in range(n):
            carry, out = model(carry=carry, batch=batch)
            outs.append((out, {k: v.clone() for k, v in carry.inner_carry.as_dict().items()}))
    return outs


@pytest.mark.parametrize("graphs", [False, True], ids=["plain", "cuda_graphs"])
@pytest.mark.parametrize("kind", KINDS)
def test_cpp_model_on_gpu_equals_eager(kind, graphs):
    """Each ACT step from the same carry: outputs and carry within 1e-5 of scale of eager on the GPU."""
    _need_cuda_kernels()
    eager_model, cfg = _twin(kind, "eager")
    cpp_model, _ = _twin(kind, "cpp")
    eager_model, cpp_model = eager_model.to(DEV).eval(), cpp_model.to(DEV).eval()
    cpp_model.inner.use_cuda_graphs = graphs
    batch = {k: v.to(DEV) for k, v in tiny_batch(cfg).items()}
    with torch.no_grad():
        carry = eager_model.initial_carry(batch)
        for step in range(3):
            c_carry, c_out = cpp_model(carry=carry, batch=batch)
            carry, e_out = eager_model(carry=carry, batch=batch)
            for k in ("logits", "q_halt_logits"):
                assert scale_err(c_out[k], e_out[k]) <= 1e-5, f"{kind} step {step} {k}"
            for k, v in carry.inner_carry.as_dict().items():
                assert scale_err(getattr(c_carry.inner_carry, k), v) <= 1e-5, f"{kind} step {step} state {k}"


@pytest.mark.parametrize("kind", KINDS)
def test_triton_model_on_gpu_equals_eager(kind):
    """backend="triton" compiled for this GPU (not the interpreter): one training ACT step from the same carry,
    outputs and every parameter gradient against eager on the GPU."""
    models, cfg = one_head_twins(kind, ("eager", "triton"))
    batch = {k: v.to(DEV) for k, v in tiny_batch(cfg).items()}
    results = train_step_from_same_carry([m.to(DEV) for m in models], batch)
    (e_logits, eg), (t_logits, tg) = results
    assert scale_err(t_logits, e_logits) <= 2e-3
    assert set(tg) == set(eg)
    for n in eg:
        assert scale_err(tg[n], eg[n]) <= 2e-3, f"{kind} grad {n}: {scale_err(tg[n], eg[n]):.2e}"


def _launch_counts(model, carry, batch, steps):
    """(graph launches, kernel launches) of ``steps`` eval ACT steps, read off the profiler's CUDA runtime calls."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            carry, _ = model(carry=carry, batch=batch)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    return sum("GraphLaunch" in n for n in names), sum("LaunchKernel" in n for n in names)


def test_cuda_graph_is_one_launch_per_act_step():
    """With CUDA graphs the no-grad recursion of an eval ACT step is one graph launch; what is still launched
    outside it (the embedding and the heads) is a small fraction of the plain step's kernel launches."""
    _need_cuda_kernels()
    model, cfg = _twin("trm_grad2", "cpp")
    model = model.to(DEV).eval()
    batch = {k: v.to(DEV) for k, v in tiny_batch(cfg).items()}
    counts = {}
    for graphs in (False, True):
        model.inner.use_cuda_graphs = graphs
        with torch.no_grad():
            carry = model.initial_carry(batch)
            carry, _ = model(carry=carry, batch=batch)  # warm-up (and the capture, with graphs)
        counts[graphs] = _launch_counts(model, carry, batch, steps=3)
    assert counts[True][0] == 3, counts
    assert counts[False][0] == 0, counts
    assert counts[True][1] * 4 <= counts[False][1], counts
