"""fastrecur's eager HRM and TRM against outputs and gradients of the public reference code."""

import pytest

from golden import CASES, assert_close, build, load_case, run_eval, run_train


@pytest.mark.parametrize("name", CASES)
def test_eval_matches_reference(name):
    case = load_case(name)
    model = build(case)
    outs = run_eval(model, case["batch"], steps=len(case["eval"]))
    for i, (got, want) in enumerate(zip(outs, case["eval"])):
        assert set(got) == set(want), f"step {i}: output keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{name} eval step {i} {k}")


@pytest.mark.parametrize("name", CASES)
def test_train_outputs_and_grads_match_reference(name):
    case = load_case(name)
    model = build(case)
    out, grads = run_train(model, case["batch"], case["R"])
    assert set(out) == set(case["train"]), f"train output keys {sorted(out)} != {sorted(case['train'])}"
    for k, want in case["train"].items():
        assert_close(out[k], want, f"{name} train {k}")
    assert set(grads) == set(case["grads"]), f"grad set differs: {set(grads) ^ set(case['grads'])}"
    for k, want in case["grads"].items():
        assert_close(grads[k], want, f"{name} grad {k}")


@pytest.mark.parametrize("name", CASES)
def test_state_dict_keys_identical_to_reference(name):
    case = load_case(name)
    model = build(case)
    assert list(model.state_dict().keys()) == list(case["state"].keys()) or set(model.state_dict()) == set(
        case["state"]
    )
    for k, v in model.state_dict().items():
        assert v.shape == case["state"][k].shape, k
