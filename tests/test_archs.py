"""The TRM paper's comparison architectures (trm_singlez, trm_hier6, transformers_baseline) and the TinyRecursiveModels
HRM with mlp_t, against outputs and gradients of the reference code (tests/fixtures/golden) on every backend; and
every arch file of both reference repositories (tests/fixtures/reference_arch) accepted with its meaning."""

import glob
import itertools
import json
import os

import pytest
import torch

import fastrecur
from fastrecur.models import TransformerBaseline, TRMHier6, TRMSingleZ, reference_model_class
from fastrecur.models.schedules import trm_hier6_schedule, trm_singlez_schedule
from golden import assert_close, build, load_case, run_eval, run_train

CASES = ["trm_singlez", "trm_hier6", "transformers_baseline", "transformers_baseline_6heads", "hrm_mlp_t"]
ARCH_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "reference_arch")
ARCH_FILES = sorted(os.path.relpath(p, ARCH_DIR) for p in glob.glob(os.path.join(ARCH_DIR, "*", "*.yaml")))

_cpp_ok, _cpp_why = fastrecur.backends()["cpp"]
_triton_ok, _triton_why = fastrecur.backends()["triton"]
needs_cpp = pytest.mark.skipif(not _cpp_ok and os.environ.get("FASTRECUR_REQUIRE_EXT") != "1", reason=_cpp_why)
needs_triton = pytest.mark.skipif(not _triton_ok, reason=_triton_why)


def check_against_reference(name, backend, eval_steps=3, rtol_last_eval=1e-4):
    """Eval outputs over ``eval_steps`` ACT steps, training outputs and every parameter gradient of ``name`` on
    ``backend`` against the reference's, at 1e-4 of each tensor's scale (``rtol_last_eval`` for a third eval
    step: fp32 rounding differences of another backend grow about 8x per ACT step through the recursion)."""
    case = load_case(name)
    outs = run_eval(build(case, backend), case["batch"], steps=eval_steps)
    for i, (got, want) in enumerate(zip(outs, case["eval"])):
        assert set(got) == set(want), f"step {i}: output keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{name} {backend} eval step {i} {k}", rtol=1e-4 if i < 2 else rtol_last_eval)
    out, grads = run_train(build(case, backend), case["batch"], case["R"])
    assert set(out) == set(case["train"]), f"train output keys {sorted(out)} != {sorted(case['train'])}"
    for k, want in case["train"].items():
        assert_close(out[k], want, f"{name} {backend} train {k}")
    assert set(grads) == set(case["grads"]), f"grad set differs: {set(grads) ^ set(case['grads'])}"
    for k, want in case["grads"].items():
        assert_close(grads[k], want, f"{name} {backend} grad {k}")


@pytest.fixture(autouse=True)
def _golden_threads():
    """The thread count the golden cases were made with (2): CPU attention for head_dim 10 rounds by it. The
    conftest fixture restores the process's count afterwards."""
    torch.set_num_threads(2)


@pytest.mark.parametrize("name", CASES)
def test_eager_matches_reference(name):
    check_against_reference(name, "eager")


@pytest.mark.parametrize("name", CASES)
def test_eager_is_the_reference_bit_for_bit(name):
    """The eager loop adds in the reference's order (hier6's six-state sums included): equal to the last bit."""
    case = load_case(name)
    outs = run_eval(build(case), case["batch"])
    for got, want in zip(outs, case["eval"]):
        for k in want:
            assert torch.equal(got[k], want[k]), k


@needs_cpp
@pytest.mark.parametrize("name", CASES)
def test_cpp_matches_reference(name):
    check_against_reference(name, "cpp", rtol_last_eval=1e-3)


@needs_triton
@pytest.mark.parametrize("name", ["trm_singlez", "trm_hier6", "transformers_baseline"])
def test_triton_matches_reference(name):
    check_against_reference(name, "triton", eval_steps=1)


@pytest.mark.parametrize("name", CASES)
def test_state_dict_keys_are_the_references(name):
    case = load_case(name)
    model = build(case)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in case["state"].items()
    ]


@pytest.mark.parametrize("name", CASES)
def test_inference_engine_gives_the_references_last_step(name):
    """``fastrecur.engine.solve`` (what eval, solve and inspect run) with the reference evaluation's halting."""
    from fastrecur import engine

    case = load_case(name)
    res = engine.solve(build(case).eval(), case["batch"], halting="max_steps")
    assert torch.equal(res.logits, case["eval"][-1]["logits"])


@pytest.mark.parametrize("name", ["trm_singlez", "trm_hier6", "transformers_baseline"])
def test_loads_a_reference_training_checkpoint(name, tmp_path):
    """A checkpoint as the reference's pretrain.py writes it (the compiled loss head's state dict, keys
    ``_orig_mod.model.inner...``) loads into a fresh model, which then gives the reference's outputs."""
    case = load_case(name)
    path = tmp_path / "step_100"
    torch.save({"_orig_mod.model." + k: v for k, v in case["state"].items()}, str(path))
    model = type(build(case))(case["config"], backend="eager")
    fastrecur.load_checkpoint(model, str(path))
    for k, v in case["state"].items():
        assert torch.equal(model.state_dict()[k], v), k
    out = run_eval(model, case["batch"], steps=1)[0]
    for k, want in case["eval"][0].items():
        assert torch.equal(out[k], want), k


# ----- the transformer baseline's halting options -----
def _baseline_with_halt_bias(backend, **overrides):
    """The golden baseline with the q-head's halt bias raised as for the golden extras (one row halts early)."""
    case = load_case("transformers_baseline")
    model = TransformerBaseline(dict(case["config"], **overrides), backend=backend)
    model.load_state_dict(case["state"])
    with torch.no_grad():
        model.inner.q_head.bias += torch.tensor([case["q_halt_bias_offset"], 0.0])
    return case, model


@pytest.mark.parametrize("backend", ["eager", pytest.param("cpp", marks=needs_cpp)])
def test_baseline_compute_target_q_matches_reference(backend):
    case, model = _baseline_with_halt_bias(backend)
    model.train()
    batch = case["batch"]
    with torch.no_grad():
        carry = model.initial_carry(batch)
        carry, _ = model(carry=carry, batch=batch, compute_target_q=True)
        carry, out = model(carry=carry, batch=batch, compute_target_q=True)
        assert set(out) == set(case["train_target_q"])
        for k, want in case["train_target_q"].items():
            assert_close(out[k], want, f"compute_target_q {k}")
        # The reference's loss head never asks for the target: then there is none.
        assert "target_q_continue" not in model(carry=model.initial_carry(batch), batch=batch)[1]


@pytest.mark.parametrize("backend", ["eager", pytest.param("cpp", marks=needs_cpp)])
def test_baseline_act_inference_matches_reference(backend):
    case, model = _baseline_with_halt_bias(backend, act_inference=True)
    want_halted = case["eval_act_inference_halted"]
    assert want_halted[0].tolist() == [True, False]  # the case does exercise early halting
    model.eval()
    batch = case["batch"]
    with torch.no_grad():
        carry = model.initial_carry(batch)
        for i, want in enumerate(case["eval_act_inference"]):
            carry, out = model(carry=carry, batch=batch)
            assert torch.equal(carry.halted, want_halted[i]), f"step {i}: halted {carry.halted} != {want_halted[i]}"
            assert set(out) == set(want)
            for k in want:
                assert_close(out[k], want[k], f"act_inference step {i} {k}")


def test_baseline_without_act_runs_every_step_in_training():
    case = load_case("transformers_baseline")
    model = TransformerBaseline(dict(case["config"], act_enabled=False, halt_exploration_prob=1.0)).train()
    model.load_state_dict(case["state"])
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([5.0, -5.0]))  # q_halt >> q_continue: ACT would halt at once
    carry = model.initial_carry(case["batch"])
    for step in range(1, 4):
        carry, _ = model(carry=carry, batch=case["batch"])
        assert carry.halted.tolist() == [step == 3] * 2
    model = TransformerBaseline(dict(case["config"])).train()
    model.load_state_dict(case["state"])
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([5.0, -5.0]))
    carry, _ = model(carry=model.initial_carry(case["batch"]), batch=case["batch"])
    assert carry.halted.tolist() == [True, True]


@pytest.mark.parametrize("training", [True, False])
def test_baseline_halts_by_the_reference_rule_without_touching_the_module_mode(training):
    """The reference's ``Model_ACTV2.forward``: adaptive halting (``q_halt > q_continue``) iff ``halt_max_steps > 1``
    and ``act_enabled`` in training / ``act_inference`` in evaluation; ``actual_steps`` only in adaptive evaluation.
    The module's mode is the caller's throughout: before, after, and as code running inside forward (a pre-hook on
    the inner model) sees it."""
    case = load_case("transformers_baseline")
    batch = case["batch"]
    for act_enabled, act_inference, halt_max_steps, q_bias in itertools.product(
        [True, False], [True, False], [1, 3], [[5.0, -5.0], [-5.0, 5.0]]
    ):
        flags = dict(act_enabled=act_enabled, act_inference=act_inference, halt_max_steps=halt_max_steps)
        model = TransformerBaseline(dict(case["config"], **flags), backend="eager").train(training)
        model.load_state_dict(case["state"])
        with torch.no_grad():
            model.inner.q_head.bias.copy_(torch.tensor(q_bias))  # q_halt > q_continue for both rows, or <
        seen = []
        model.inner.register_forward_pre_hook(lambda m, args: seen.append([x.training for x in model.modules()]))
        adaptive = halt_max_steps > 1 and (act_enabled if training else act_inference)
        q_halts = q_bias[0] > q_bias[1]
        carry, out = model(carry=model.initial_carry(batch), batch=batch)
        assert torch.all((out["q_halt_logits"] > out["q_continue_logits"]) == q_halts)
        assert carry.halted.tolist() == [halt_max_steps == 1 or (adaptive and q_halts)] * 2, flags
        assert ("actual_steps" in out) == (adaptive and not training), flags
        assert model.uses_adaptive_halting() == adaptive, flags
        assert seen == [[training] * len(list(model.modules()))], flags
        assert all(m.training == training for m in model.modules()), flags


# ----- schedules and refusals -----
def test_schedules_update_what_the_reference_updates():
    s = trm_singlez_schedule(2, 3)
    assert [(u.target, u.inject) for u in s.steps] == ([("z_L", ("x",))] * 3 + [("z_L", ())]) * 2
    assert s.grad_start == 4 and s.states == ("z_L",)
    h = trm_hier6_schedule(2, 4, grad_cycles=2)
    written = [u.target for u in h.steps if u.target != "z_sum"]
    assert written == ["z_L1", "z_L2", "z_L3", "z_L4", "z_H"] * 2 and h.grad_start == 0


def test_refusals_name_the_problem():
    case = load_case("trm_hier6")
    with pytest.raises(ValueError, match="L_cycles must be <= 6, got 7"):
        TRMHier6(dict(case["config"], L_cycles=7))
    with pytest.raises(ValueError, match="pos_encodings"):
        TransformerBaseline(dict(load_case("transformers_baseline")["config"], pos_encodings="none"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['L_cycles'\]"):
        TransformerBaseline(dict(load_case("transformers_baseline")["config"], L_cycles=2))
    with pytest.raises(ValueError, match="not divisible"):
        TRMSingleZ(dict(load_case("trm_singlez")["config"], num_heads=6))
    with pytest.raises(
        ValueError, match="'recursive_reasoning.trm_hier7@TinyRecursiveReasoningModel_ACTV1' is not a model"
    ):
        reference_model_class("recursive_reasoning.trm_hier7@TinyRecursiveReasoningModel_ACTV1")
    with pytest.raises(ValueError, match="is not a model"):  # the class of another module
        reference_model_class("recursive_reasoning.trm_singlez@Model_ACTV2")
    if _triton_ok:
        with pytest.raises(ValueError, match="triton"):  # 6 heads of 10: no Triton attention kernel for head_dim 10
            TransformerBaseline(load_case("transformers_baseline_6heads")["config"], backend="triton")


# ----- the reference's arch files -----
EXPECTED = {
    "HRM/hrm_v1.yaml": "HRM",
    "TinyRecursiveModels/hrm.yaml": "HRM",
    "TinyRecursiveModels/trm.yaml": "TRM",
    "TinyRecursiveModels/trm_singlez.yaml": "TRMSingleZ",
    "TinyRecursiveModels/trm_hier6.yaml": "TRMHier6",
    "TinyRecursiveModels/transformers_baseline.yaml": "TransformerBaseline",
}


def test_every_reference_arch_file_is_here():
    assert ARCH_FILES == sorted(EXPECTED)


def _train_args(path, *extra):
    import argparse

    from fastrecur.train import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return cli.build_config(p.parse_args(["--data", "d", "--arch-config", os.path.join(ARCH_DIR, path), *extra]))[0]


@pytest.mark.parametrize("path", ARCH_FILES)
def test_arch_file_builds_the_reference_model(path):
    """``fastrecur train --arch-config FILE``'s config builds the class the file names, with the state-dict keys and
    shapes the reference code builds from the same file (tests/fixtures/reference_arch/reference_state_shapes.json)."""
    from fastrecur.train.config import MODEL_CLASSES, model_config, split_arch

    with open(os.path.join(ARCH_DIR, "reference_state_shapes.json")) as f:
        ref = json.load(f)
    config = _train_args(path)
    cls_name, _, loss_type = split_arch(config.arch)
    assert cls_name == EXPECTED[path] and loss_type == "stablemax_cross_entropy"
    assert reference_model_class(config.arch["name"]) is MODEL_CLASSES[cls_name]
    data = ref["data_keys"]
    _, cfg = model_config(config.arch, data, per_rank_batch=data["batch_size"])
    model = MODEL_CLASSES[cls_name](cfg, backend="eager")
    want = ref["models"][path]
    assert config.arch["name"] == want["name"]
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == want["state"]
    assert sum(p.numel() for p in model.parameters()) == want["parameters"]
    if "mlp_t" in config.arch:  # mlp_t: False -> attention blocks
        assert model.config.mlp_t is False and hasattr(model.inner.L_level.layers[0], "self_attn")


def test_arch_file_loss_block_is_read_and_checked(tmp_path):
    from fastrecur.train.config import split_arch

    text = open(os.path.join(ARCH_DIR, "TinyRecursiveModels", "trm_singlez.yaml")).read()
    path = tmp_path / "a.yaml"
    path.write_text(text.replace("loss_type: stablemax_cross_entropy", "loss_type: softmax_cross_entropy"))
    assert split_arch(_train_args(str(path)).arch)[2] == "softmax_cross_entropy"
    path.write_text(text.replace("name: losses@ACTLossHead", "name: losses@FocalLossHead"))
    with pytest.raises(ValueError, match="losses@FocalLossHead"):
        _train_args(str(path))
    path.write_text(text.replace("trm_singlez@", "trm_hier7@"))
    with pytest.raises(ValueError, match="trm_hier7"):
        _train_args(str(path))


def test_cli_refuses_an_arch_fastrecur_does_not_implement(tmp_path, capsys):
    from fastrecur.cli import main

    text = open(os.path.join(ARCH_DIR, "TinyRecursiveModels", "trm.yaml")).read()
    path = tmp_path / "x.yaml"
    path.write_text(text.replace("recursive_reasoning.trm@", "recursive_reasoning.trm_deep@"))
    assert main(["train", "--data", str(tmp_path), "--arch-config", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("fastrecur train: ") and "recursive_reasoning.trm_deep@TinyRecursiveReasoningModel_ACTV1" in err
    )
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def sudoku_dir(tmp_path_factory):
    from fastrecur.data import build_sudoku_dataset

    d = tmp_path_factory.mktemp("sudoku4")
    build_sudoku_dataset(str(d), n=4, num_train=16, num_test=4, num_aug=0, seed=0)
    return str(d)


@pytest.mark.parametrize(
    "path",
    [
        "TinyRecursiveModels/trm_singlez.yaml",
        "TinyRecursiveModels/trm_hier6.yaml",
        "TinyRecursiveModels/transformers_baseline.yaml",
        "TinyRecursiveModels/hrm.yaml",
    ],
)
def test_arch_file_trains(path, sudoku_dir, tmp_path):
    """Two optimiser steps from the arch file (shrunk with --set), which change the weights."""
    from fastrecur.data import PuzzleDataset
    from fastrecur.train import Trainer

    small = [
        "hidden_size=16",
        "num_heads=1",
        "expansion=2",
        "forward_dtype=float32",
        "halt_max_steps=2",
        "H_layers=1",
        "H_cycles=2",
    ]
    if "baseline" not in path:
        small += ["L_layers=1", "L_cycles=2"] + ([] if "hrm" in path else ["puzzle_emb_len=1"])
    config = _train_args(
        path,
        "--set",
        *small,
        "--out",
        str(tmp_path),
        "--global-batch-size",
        "4",
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--progress",
        "none",
        "--backend",
        "eager",
        "--no-ema",
        "--no-plot",
    )
    t = Trainer(config, PuzzleDataset(sudoku_dir, "train"), PuzzleDataset(sudoku_dir, "test"), log=lambda s: None)
    assert t.model_class == EXPECTED[path]
    before = {k: v.clone() for k, v in t.head.model.state_dict().items()}
    summary = t.fit()
    assert summary["step"] == 2
    assert any(not torch.equal(before[k], v) for k, v in t.head.model.state_dict().items())
