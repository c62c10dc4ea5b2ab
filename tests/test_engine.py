"""The inference engine (fastrecur.engine.solve) and the CUDA-graph cache (fastrecur.backend.graphs).

Engine: against the model's own ACT loop (reference evaluation: every row runs halt_max_steps), and with early
halting against solving each row alone, for every model on the recursion core and both backends.
Graphs: there is no GPU in CI, so the cache logic (keys, buckets, copy-in/out, invalidation) runs with a
stand-in for the capture that replays the un-graphed work; the real capture is tested only when CUDA exists.
"""

import os

import pytest
import torch

from fastrecur import _ext, engine
from fastrecur.backend import graphs
from fastrecur.engine import solve
from fastrecur.models import HRM, TRM
from golden import run_eval, scale_err  # the reference evaluation: the model's own ACT loop, outputs of every step
from test_models import tiny_batch, tiny_config
from test_variants import make

KINDS = ["hrm", "hrm_shared", "trm", "trm_mlp_t", "srm", "srm_mlp_t", "flat"]
BACKENDS = ["eager", "cpp"]


def _need(backend):
    if backend == "cpp" and not _ext.available():
        if os.environ.get("FASTRECUR_REQUIRE_EXT") == "1":
            pytest.fail(_ext.status())
        pytest.skip(_ext.status())


def model_for(kind, backend="eager", seed=0):
    torch.manual_seed(seed)
    if kind in ("hrm", "trm", "trm_mlp_t"):
        cfg = tiny_config(H_cycles=2, L_cycles=2, L_layers=2, H_layers=1)
        if kind == "hrm":
            model = HRM(cfg, backend=backend)
        else:
            mlp_t = kind == "trm_mlp_t"
            model = TRM(
                dict(cfg, puzzle_emb_len=1, mlp_t=mlp_t, pos_encodings="none" if mlp_t else "rope"), backend=backend
            )
    else:
        model, cfg = make(kind)
        model.backend = backend
    return model.eval(), cfg


def row(batch, i):
    return {k: v[i : i + 1] for k, v in batch.items()}


def spread_halting(model, batch, backend):
    """Random Q head whose bias puts half the rows over the threshold at step 1, so rows halt at different
    steps (q_head starts at zero weight and bias -5: nothing would ever halt)."""
    with torch.no_grad():
        q = model.inner.q_head
        q.weight.normal_(0, 2.0 / q.weight.shape[1] ** 0.5)
        q.bias.zero_()
        first = solve(model, batch, max_steps=1, backend=backend).q_halt_logits
        q.bias[0] = -torch.quantile(first, 0.5)  # midway between two rows: no row sits at the threshold


# ------------------------------------------------------------------------------------------------------------
# Engine
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_max_steps_equals_model_loop(kind, backend):
    """halting="max_steps" is the reference evaluation: same final logits/Q as the model's own loop on the
    same backend, per-step predictions equal to each step's argmax, every row takes halt_max_steps."""
    _need(backend)
    model, cfg = model_for(kind, backend)
    batch = tiny_batch(cfg, b=4)
    T = cfg["halt_max_steps"]
    ref = run_eval(model, batch, T)
    res = solve(model, batch, halting="max_steps", backend=backend, return_step_predictions=True)
    assert res.steps.tolist() == [T] * 4 and res.mean_steps == T and res.work_fraction == 1.0
    assert scale_err(res.logits, ref[-1]["logits"]) <= 1e-6
    assert scale_err(res.q_halt_logits, ref[-1]["q_halt_logits"]) <= 1e-5
    assert scale_err(res.q_continue_logits, ref[-1]["q_continue_logits"]) <= 1e-5
    assert torch.equal(res.predictions, ref[-1]["logits"].argmax(-1))
    assert res.step_predictions.shape == (T, 4, cfg["seq_len"])
    for t in range(T):
        assert torch.equal(res.step_predictions[t], ref[t]["logits"].argmax(-1)), f"step {t}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["trm", "trm_mlp_t"])
def test_bf16_solve_equals_model_loop(kind, backend):
    """bf16 activations: the engine runs the same kernels in the same order as the model's loop."""
    _need(backend)
    model, cfg = model_for(kind, backend)
    twin = type(model)(dict(model.config.to_dict(), forward_dtype="bfloat16"), backend=backend).eval()
    twin.load_state_dict(model.state_dict())
    batch = tiny_batch(cfg, b=3)
    ref = run_eval(twin, batch, 3)[-1]
    res = solve(twin, batch, max_steps=3, backend=backend)
    assert res.logits.dtype == torch.bfloat16
    assert scale_err(res.logits, ref["logits"]) <= 1e-6 and scale_err(res.q_halt_logits, ref["q_halt_logits"]) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_q_halting_each_row_equals_solving_it_alone(kind, backend):
    """Early halting with compaction: each row takes the steps it takes alone, and its outputs equal solving
    it alone to fp32 rounding.

    "fp32 rounding" is measured, not guessed: GEMMs round differently for a batch of 1 than for a batch of
    several rows, and the recursion amplifies that (up to ~1e-3 of scale after 4 steps of the tiny mlp_t
    models). The model's own loop shows the same difference between the row in the batch and the row
    alone, so the bound is twice that (plus 2e-5)."""
    _need(backend)
    model, cfg = model_for(kind, backend, seed=1)
    B = 6
    batch = tiny_batch(cfg, b=B, seed=3)
    spread_halting(model, batch, backend)
    res = solve(model, batch, halting="q", backend=backend, return_step_predictions=True)
    T = cfg["halt_max_steps"]
    assert res.steps.min() == 1 and len(set(res.steps.tolist())) >= 2, f"halting not spread: {res.steps.tolist()}"
    for i in range(B):
        s = res.steps[i].item()
        alone = solve(model, row(batch, i), halting="q", backend=backend, return_step_predictions=True)
        assert alone.steps.item() == s, f"row {i}"
        ref_in_batch = run_eval(model, batch, s)[-1]
        ref_alone = run_eval(model, row(batch, i), s)[-1]
        tol = 2 * scale_err(ref_in_batch["logits"][i], ref_alone["logits"][0]) + 2e-5
        assert scale_err(res.logits[i], alone.logits[0]) <= tol, (
            f"row {i}: {scale_err(res.logits[i], alone.logits[0]):.2e} > {tol:.2e}"
        )
        # Against the uncompacted batch (every row run s steps): equal up to the batch-size effect above.
        full = solve(model, batch, max_steps=s, backend=backend)
        assert scale_err(res.logits[i], full.logits[i]) <= tol
        q_tol = 2 * abs(ref_in_batch["q_halt_logits"][i] - ref_alone["q_halt_logits"][0]) + 2e-5
        assert abs(res.q_halt_logits[i] - alone.q_halt_logits[0]) <= q_tol * (1 + abs(alone.q_halt_logits[0]))
        assert torch.equal(res.step_predictions[:, i], alone.step_predictions[:, 0])
        assert (res.step_predictions[s:, i] == -1).all() and (res.step_predictions[:s, i] >= 0).all()
        # The rule: q_halt > 0 at the final step, unless the row ran into max_steps.
        assert (res.q_halt_logits[i] > 0).item() or s == T
    assert res.work_fraction == pytest.approx(res.steps.sum().item() / (B * T))


def test_q_halting_compacts_the_batch(monkeypatch):
    """Halted rows leave the batch: each ACT step runs on exactly the rows still running."""
    model, cfg = model_for("trm", "eager", seed=1)
    batch = tiny_batch(cfg, b=6, seed=3)
    spread_halting(model, batch, "eager")
    sizes = []
    real = engine.make_stepper

    def spy(inner, backend, cuda_graphs=False):
        step = real(inner, backend, cuda_graphs)

        def counted(states, x):
            sizes.append(x.shape[0])
            step(states, x)

        return counted

    monkeypatch.setattr(engine, "make_stepper", spy)
    res = solve(model, batch, halting="q", backend="eager")
    running = [int((res.steps >= t).sum()) for t in range(1, int(res.steps.max()) + 1)]
    assert sizes == running and sizes[-1] < sizes[0]


def test_q_continue_halting_and_max_steps_override():
    model, cfg = model_for("hrm", "eager", seed=2)
    batch = tiny_batch(cfg, b=5)
    # The model's initial Q head (bias -5 for halting) never halts on "q": every row runs max_steps.
    assert solve(model, batch, halting="q", backend="eager", max_steps=3).steps.tolist() == [3] * 5
    with torch.no_grad():
        model.inner.q_head.weight.normal_(0, 0.5)
        model.inner.q_head.bias.zero_()
    res = solve(model, batch, halting="q_continue", backend="eager", max_steps=7)
    assert res.max_steps == 7 and 1 <= res.steps.min() and res.steps.max() <= 7
    for i in range(5):
        s = res.steps[i].item()
        assert s == 7 or res.q_halt_logits[i] > res.q_continue_logits[i]


def test_cpp_engine_makes_one_native_call_per_act_step(monkeypatch):
    _need("cpp")
    from fastrecur.core import cpp_runner

    calls = []
    real = cpp_runner.run_steps_cpp
    monkeypatch.setattr(cpp_runner, "run_steps_cpp", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    model, cfg = model_for("trm", "cpp")
    solve(model, tiny_batch(cfg), backend="cpp", max_steps=3)
    assert len(calls) == 3


def test_solve_validates_its_arguments():
    model, cfg = model_for("trm", "eager")
    batch = tiny_batch(cfg)
    with pytest.raises(TypeError, match="model"):
        solve(model.inner, batch)
    with pytest.raises(ValueError, match="halting"):
        solve(model, batch, halting="never")
    with pytest.raises(ValueError, match="backend"):
        solve(model, batch, backend="fastest")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_steps"):
            solve(model, batch, max_steps=bad)
    with pytest.raises(ValueError, match="inputs"):
        solve(model, {"inputs": batch["inputs"][:, :2], "puzzle_identifiers": batch["puzzle_identifiers"]})
    with pytest.raises(ValueError, match="CUDA"):
        solve(model, batch, backend="eager", cuda_graphs=True)
    empty = {k: v[:0] for k, v in batch.items()}
    for name in ("eager", "cpp") if _ext.available() else ("eager",):  # the C++ loop named its internal tensor x
        with pytest.raises(ValueError, match=r"^batch\['inputs'\] has 0 rows: give at least one puzzle$"):
            solve(model, empty, backend=name)


# ------------------------------------------------------------------------------------------------------------
# CUDA graph cache (logic on CPU through a stand-in capture)
# ------------------------------------------------------------------------------------------------------------


class _ReplayGraph:
    """Stand-in for a captured graph: replay() runs the work again on the static buffers."""

    def __init__(self, fn, static_in, static_x):
        self.fn, self.static_in, self.static_x = fn, static_in, static_x
        self.out = {k: torch.empty_like(v) for k, v in static_in.items()}

    def replay(self):
        res = dict(self.static_in)
        self.fn(res, self.static_x)
        for k in self.out:
            self.out[k].copy_(res[k])


class CpuGraphCache(graphs.GraphCache):
    def _check_device(self, x):
        pass

    def _capture(self, fn, static_in, static_x):
        fn(dict(static_in), static_x)  # the warm-up, as in the real capture (allocates the C++ workspace)
        g = _ReplayGraph(fn, static_in, static_x)
        return g, g.out


def _plain(model, backend, x, states):
    out = {k: v.clone() for k, v in states.items()}
    engine.make_stepper(model.inner, backend)(out, x)
    return {k: out[k] for k in states}


def _inputs(model, cfg, b, seed=0):
    batch = tiny_batch(cfg, b=b, seed=seed)
    with torch.no_grad():
        x = model.inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"]).contiguous()
        states = engine.initial_states(model.inner, x)
        engine.make_stepper(model.inner, "eager")(states, x)  # not the init values: rows differ
        return x, {k: v.contiguous() for k, v in states.items() if k in model.inner.state_inits}


def test_bucket_size():
    assert [graphs.bucket_size(n) for n in (1, 2, 3, 4, 5, 8, 9, 100)] == [1, 2, 4, 4, 8, 8, 16, 128]
    with pytest.raises(ValueError):
        graphs.bucket_size(0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["trm", "srm_mlp_t"])
def test_graph_cache_replays_match_plain_path_and_keys(kind, backend):
    """Buckets, copy-in/copy-out into the caller's states (padded rows do not leak), one capture per bucket."""
    _need(backend)
    model, cfg = model_for(kind, backend)
    cache = CpuGraphCache(model.inner)
    steps = model.inner.schedule.steps
    with torch.no_grad():
        for b in (3, 4, 2, 3):
            x, states = _inputs(model, cfg, b, seed=b)
            want = _plain(model, backend, x, states)
            cache.run(steps, states, x, backend)
            for k in want:
                assert scale_err(states[k], want[k]) <= 1e-5, f"batch {b} state {k}"
    assert cache.stats.captures == 2 and [k[1] for k in cache.stats.keys] == [4, 2]
    assert cache.stats.replays == 4 and len(cache) == 2


def test_graph_cache_key_changes_with_shape_dtype_and_replaced_weights():
    model, cfg = model_for("trm", "eager")
    cache = CpuGraphCache(model.inner)
    steps = model.inner.schedule.steps
    x, states = _inputs(model, cfg, 3)
    k0 = cache.key(steps, "eager", x)
    assert cache.key(steps, "eager", x[:1].expand(4, -1, -1)) == k0  # same bucket
    assert cache.key(steps, "eager", x[:, :-1]) != k0
    assert cache.key(steps, "eager", x.double()) != k0
    assert cache.key(steps, "cpp", x) != k0
    assert cache.key(steps[:-1], "eager", x) != k0
    w = model.inner.L_level.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        w.mul_(1.5)  # in place: same key (a replay reads the new values)
    assert cache.key(steps, "eager", x) == k0
    w.data = w.data.clone()  # replaced: new key, the next run re-captures
    assert cache.key(steps, "eager", x) != k0
    assert CpuGraphCache(model.inner, bucket=False).key(steps, "eager", x)[2] == 3


def test_graph_cache_sees_in_place_weight_updates_and_recaptures_replaced_ones():
    model, cfg = model_for("trm", "eager")
    cache = CpuGraphCache(model.inner)
    steps = model.inner.schedule.steps
    x, states = _inputs(model, cfg, 2)
    w = model.inner.L_level.layers[1].mlp.gate_up_proj.weight
    for change in (lambda: w.data.mul_(0.5), lambda: setattr(w, "data", w.data * 2)):
        cache.run(steps, {k: v.clone() for k, v in states.items()}, x, "eager")
        with torch.no_grad():
            change()
        got = {k: v.clone() for k, v in states.items()}
        cache.run(steps, got, x, "eager")
        want = _plain(model, "eager", x, states)
        for k in want:
            assert scale_err(got[k], want[k]) <= 1e-6
    assert cache.stats.captures == 2


def test_graph_cache_drops_graphs_when_the_workspace_changes():
    """A capture must never outlive the C++ workspace it captured: clearing (or growing) it drops the graphs."""
    _need("cpp")
    # The token mixer's transposed-state buffer grows with the batch in every CPU threading mode.
    model, cfg = model_for("trm_mlp_t", "cpp")
    cache = CpuGraphCache(model.inner)
    steps = model.inner.schedule.steps
    x, states = _inputs(model, cfg, 2)
    cache.run(steps, states, x, "cpp")
    cache.run(steps, states, x, "cpp")
    assert cache.stats.captures == 1 and cache.stats.invalidations == 0
    _ext.clear_workspaces()
    cache.run(steps, states, x, "cpp")
    assert cache.stats.invalidations == 1 and cache.stats.captures == 2 and len(cache) == 1
    # A much larger bucket grows the workspace during its warm-up: the earlier graph is dropped.
    xl, sl = _inputs(model, cfg, 64)
    cache.run(steps, sl, xl, "cpp")
    assert len(cache) == 1 and cache.stats.invalidations == 2


def test_graph_cache_eviction_and_validation():
    model, cfg = model_for("flat", "eager")
    cache = CpuGraphCache(model.inner, max_graphs=2)
    steps = model.inner.schedule.steps
    for b in (1, 2, 3, 1):
        x, states = _inputs(model, cfg, b)
        cache.run(steps, states, x, "eager")
    assert len(cache) == 2 and cache.stats.evictions == 2 and cache.stats.captures == 4
    with pytest.raises(ValueError, match="missing"):
        cache.run(steps, {}, x, "eager")
    with pytest.raises(ValueError, match="backend"):
        cache.run(steps, states, x, "fastest")
    with pytest.raises(ValueError, match="max_graphs"):
        graphs.GraphCache(model.inner, max_graphs=0)


def test_real_graph_cache_refuses_cpu_tensors():
    model, cfg = model_for("trm", "eager")
    x, states = _inputs(model, cfg, 2)
    with pytest.raises(ValueError, match="CUDA"):
        graphs.graphs_for(model.inner).run(model.inner.schedule.steps, states, x, "eager")
    assert graphs.graphs_for(model.inner) is graphs.graphs_for(model.inner)


def test_engine_with_graph_stand_in_equals_plain(monkeypatch):
    """make_stepper(cuda_graphs=True) routes through the model's cache (here the CPU stand-in)."""
    model, cfg = model_for("srm", "eager", seed=1)
    batch = tiny_batch(cfg, b=5, seed=3)
    spread_halting(model, batch, "eager")
    want = solve(model, batch, halting="q", backend="eager")
    cache = CpuGraphCache(model.inner)
    monkeypatch.setattr(graphs, "graphs_for", lambda inner: cache)
    real = engine.make_stepper
    monkeypatch.setattr(engine, "make_stepper", lambda inner, backend, cuda_graphs=False: real(inner, backend, True))
    got = solve(model, batch, halting="q", backend="eager")
    assert torch.equal(got.steps, want.steps) and scale_err(got.logits, want.logits) <= 1e-5
    assert cache.stats.replays == int(want.steps.max()) and cache.stats.captures >= 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_graph_solve_equals_plain_on_gpu(backend):
    if backend == "cpp" and not _ext.has_cuda_kernels():
        pytest.skip("extension built without CUDA kernels")
    model, cfg = model_for("trm", backend, seed=1)
    model = model.cuda()
    batch = {k: v.cuda() for k, v in tiny_batch(cfg, b=6, seed=3).items()}
    spread_halting(model, batch, backend)
    want = solve(model, batch, halting="q", backend=backend)
    got = solve(model, batch, halting="q", backend=backend, cuda_graphs=True)
    assert torch.equal(got.steps, want.steps)
    assert scale_err(got.logits, want.logits) <= 1e-5
