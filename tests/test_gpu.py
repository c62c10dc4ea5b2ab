"""GPU checks, skipped without CUDA (CI has none): the C++ loop's CUDA kernels, its CUDA graphs and the Triton
backend, each against eager PyTorch on the same GPU. ``scripts/gpu_check.sh`` runs this file on a lent GPU.

fp32 matmuls are kept in full precision here (TF32 off) so that 1e-5 of scale is a fair bound for the C++ loop,
whose GEMMs are cuBLAS calls like eager's; the Triton kernels' tl.dot may use TF32, so they get 2e-3.
"""

import os

import pytest
import torch

from fastrecur import _ext
from fastrecur.train.state import carry_from_state, carry_to_state
from golden import scale_err
from ops.test_swiglu_mlp import eps_dominated_grad_h_errors
from test_cpp_extension import CASES, EPS, H, cast_case, eager_loop, make_case, rms, rmse, run_both
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

    def mv(t):
        return None if t is None else t.to(DEV)

    levels = {k: [type(w)(*(t.to(DEV) for t in w)) for w in ws] for k, ws in levels.items()}
    return steps, {k: v.to(DEV) for k, v in states.items()}, x.to(DEV), levels, (mv(cos), mv(sin))


# ----------------------------------------------------------------------------------------------------------
# The fused CUDA elementwise kernels and the loop (csrc/kernels.cu)
# ----------------------------------------------------------------------------------------------------------

TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


# Widths that take each launch path: register kernels for <= 128/256/512/1024 columns, the loop kernel above.
@pytest.mark.parametrize("cols", [64, 200, 512, 520, 2000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_add_rms_norm_matches_eager(dtype, cols):
    _need_cuda_kernels()
    ops = _ext.ops()
    for rows in (1, 3 * 97):
        a, b = torch.randn(rows, cols, device=DEV, dtype=dtype), torch.randn(rows, cols, device=DEV, dtype=dtype)
        out = torch.empty_like(a)
        ops.add_rms_norm(a, b, EPS, out)
        assert scale_err(out, rms(a + b)) <= TOL[dtype], rows
        ref = rms(a + b)
        ops.add_rms_norm(a, b, EPS, a)  # in place
        assert scale_err(a, ref) <= TOL[dtype], rows


# 512: vectorised (16-byte) loads; 300 in 16-bit types and 7: element loads; the offset view: misaligned base.
@pytest.mark.parametrize("cols", [7, 300, 512, "misaligned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_swiglu_matches_eager(dtype, cols):
    _need_cuda_kernels()
    ops = _ext.ops()
    n = 512 if cols == "misaligned" else cols
    shift = 1 if cols == "misaligned" else 0  # a contiguous tensor starting one element into its storage
    gu = torch.randn(5 * 97 * 2 * n + shift, device=DEV, dtype=dtype)[shift:].view(5, 97, 2 * n)
    act = torch.empty(5, 97, n, device=DEV, dtype=dtype)
    ops.swiglu(gu, act)
    ref = (torch.nn.functional.silu(gu[..., :n].float()) * gu[..., n:].float()).to(dtype)
    assert scale_err(act, ref) <= TOL[dtype]


# n1 (the reduced token axis): 5, 97 and 250 take the register kernel (K = 4, 16, 32), 300 the loop kernel.
@pytest.mark.parametrize("n1", [5, 97, 250, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_add_rms_norm_dim1_matches_eager(dtype, n1):
    _need_cuda_kernels()
    ops = _ext.ops()
    for n0, n2 in ((1, 512), (3, 520)):
        aT = torch.randn(n1 + 7, n0, n2, device=DEV, dtype=dtype)[:n1].permute(1, 0, 2)
        bT = torch.randn(n1, n0, n2, device=DEV, dtype=dtype).permute(1, 0, 2)
        out3 = torch.empty(n0, n1, n2, device=DEV, dtype=dtype)
        ops.add_rms_norm_dim1(aT, bT, EPS, out3)
        s = (aT + bT).float()
        ref = (s * torch.rsqrt(s.pow(2).mean(1, keepdim=True) + EPS)).to(dtype)
        assert scale_err(out3, ref) <= TOL[dtype], (n0, n2)


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
    """Each ACT step from the same carry: outputs and carry within 1e-5 of scale of eager on the GPU, or within
    twice eager's own GPU-vs-CPU difference where that is larger (cuBLAS picks its fp32 GEMM kernel, and so its
    summation order, by layout: the token-mixing GEMMs of mlp_t models are laid out differently in the two
    backends, and one such step measured 1.04e-5 on an H100)."""
    _need_cuda_kernels()
    eager_cpu, cfg = _twin(kind, "eager")
    eager_model, _ = _twin(kind, "eager")
    cpp_model, _ = _twin(kind, "cpp")
    eager_cpu = eager_cpu.eval()
    eager_model, cpp_model = eager_model.to(DEV).eval(), cpp_model.to(DEV).eval()
    cpp_model.inner.use_cuda_graphs = graphs
    batch_cpu = tiny_batch(cfg)
    batch = {k: v.to(DEV) for k, v in batch_cpu.items()}
    with torch.no_grad():
        carry = eager_model.initial_carry(batch)
        for step in range(3):
            c_carry, c_out = cpp_model(carry=carry, batch=batch)
            h_carry, h_out = eager_cpu(
                carry=carry_from_state(carry_to_state(carry), torch.device("cpu")), batch=batch_cpu
            )
            carry, e_out = eager_model(carry=carry, batch=batch)
            pairs = [(k, c_out[k], e_out[k], h_out[k]) for k in ("logits", "q_halt_logits")]
            pairs += [
                (k, getattr(c_carry.inner_carry, k), v, getattr(h_carry.inner_carry, k))
                for k, v in carry.inner_carry.as_dict().items()
            ]
            for k, got, ref, ref_cpu in pairs:
                bound = max(1e-5, 2 * scale_err(ref_cpu, ref.cpu()))
                assert scale_err(got, ref) <= bound, f"{kind} step {step} {k}: {scale_err(got, ref):.3e} > {bound:.3e}"


@pytest.mark.parametrize("kind", KINDS)
def test_triton_model_on_gpu_equals_eager(kind):
    """backend="triton" compiled for this GPU (not the interpreter): one training ACT step from the same carry,
    outputs and every parameter gradient against eager on the GPU."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip(
            "the Triton interpreter is on (tests/conftest.py sets it for CPU runs): run this file with "
            "TRITON_INTERPRET=0, as scripts/gpu_check.sh does"
        )
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


def test_triton_swiglu_grad_h_where_eps_dominates_the_norm():
    """The fuzz case that the CPU path failed (MKL's addmm into ds): on CUDA the op keeps one addmm (cuBLAS
    rounds once in its epilogue), so its fp32 dh must be as close to fp64 as eager's, like on the CPU."""
    fused_err, eager_err = eps_dominated_grad_h_errors(DEV)
    assert fused_err <= 2 * eager_err, (fused_err, eager_err)


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


def test_graphed_benchmark_function_keeps_its_tensors_alive():
    """act_step_floor.graphed: replaying the captured function after the caller dropped it must write only into
    the function's own (still alive) tensors, never into memory handed on to new tensors."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import act_step_floor

    def make():
        a, w, out = (torch.randn(256, 256, device=DEV) for _ in range(3))
        return lambda: torch.mm(a, w, out=out)

    replay = act_step_floor.graphed(make(), DEV)  # the only reference to the function is the replay's
    torch.cuda.synchronize()
    fresh = [torch.full((256, 256), 7.0, device=DEV) for _ in range(8)]  # would take freed blocks
    for _ in range(3):
        replay()
    torch.cuda.synchronize()
    assert all(bool((t == 7.0).all()) for t in fresh)
