"""fastrecur.patch.apply(): a copy of the reference training script builds fastrecur's models.

Run against tests/fixtures/reference_standin (the reference repositories' module layout, tiny files whose model
modules raise when imported) in a subprocess, so the sys.modules patching stays there.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import fastrecur
import fastrecur.patch
from fastrecur.train.config import load_arch_file, model_config
from golden import load_case

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "fixtures", "reference_standin")
ARCH_DIR = os.path.join(HERE, "fixtures", "reference_arch")
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastrecur.__file__)))


def run_script(job, installed=False):
    """The stand-in pretrain.py on ``job``; its JSON result."""
    path = [PKG_PARENT] + ([os.path.join(STANDIN, "installed")] if installed else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "pretrain.py"],
        cwd=STANDIN,
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_reference_arch_name_builds_fastrecurs_model():
    """Each arch file's ``name`` resolves through the script's ``load_model_class`` to fastrecur's class, with the
    state-dict keys and shapes that the reference code builds from the file; the stand-ins for the missing
    flash_attn and adam_atan2 import and compute."""
    with open(os.path.join(ARCH_DIR, "reference_state_shapes.json")) as f:
        ref = json.load(f)
    data = ref["data_keys"]
    expected = {
        "HRM/hrm_v1.yaml": "HRM",
        "TinyRecursiveModels/hrm.yaml": "HRM",
        "TinyRecursiveModels/trm.yaml": "TRM",
        "TinyRecursiveModels/trm_singlez.yaml": "TRMSingleZ",
        "TinyRecursiveModels/trm_hier6.yaml": "TRMHier6",
        "TinyRecursiveModels/transformers_baseline.yaml": "TransformerBaseline",
    }
    models = []
    for path in expected:
        arch = load_arch_file(os.path.join(ARCH_DIR, path))
        _, config = model_config(arch, data, per_rank_batch=data["batch_size"])
        models.append({"name": arch["name"], "config": dict(config, causal=False)})  # as the reference's create_model
    out = run_script({"backend": "auto", "force": False, "models": models})
    for path, entry in zip(expected, out["models"]):
        assert entry["class"] == ref["models"][path]["name"].split("@")[1]  # the reference's class name ...
        assert expected[path] in entry["mro"]  # ... on fastrecur's class
        assert entry["state"] == ref["models"][path]["state"], path
        assert entry["backend"] == "auto"
        assert entry["source"].startswith(os.path.dirname(fastrecur.__file__)) and os.path.isfile(entry["source"])
    assert out["adam_atan2"] == "fastrecur.train.optim"
    assert out["flash_attn"] == "fastrecur.patch.flash_attn" and out["attention_vs_sdpa"] < 1e-6
    assert out["IGNORE_LABEL_ID"] == -100
    assert out["report"]["flash_attn"] == out["report"]["adam_atan2"] == "fastrecur stand-in"
    assert out["report"]["models.recursive_reasoning.trm_hier6"] == "fastrecur TRMHier6"


GOLDEN_NAMES = {
    "hrm": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
    "hrm_mlp_t": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
    "trm": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
    "trm_singlez": "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1",
    "trm_hier6": "recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1",
    "transformers_baseline": "recursive_reasoning.transformers_baseline@Model_ACTV2",
}


def test_reference_script_gives_the_reference_outputs_and_trains(tmp_path):
    """Built and run the reference script's way (``model_cls(config)``, ``ACTLossHead(model, loss_type)``,
    ``head(carry=..., batch=..., return_keys=...)``), with the reference's weights: its logits, bit for bit on
    the eager backend; one AdamATan2 step changes the weights."""
    models = []
    for name, identifier in GOLDEN_NAMES.items():
        case = load_case(name)
        torch.save(case["state"], str(tmp_path / f"{name}.state"))
        torch.save(case["batch"], str(tmp_path / f"{name}.batch"))
        models.append(
            {
                "name": identifier,
                "config": dict(case["config"], causal=False),
                "state": str(tmp_path / f"{name}.state"),
                "batch": str(tmp_path / f"{name}.batch"),
                "out": str(tmp_path / f"{name}.out"),
            }
        )
    out = run_script({"backend": "eager", "force": False, "models": models})
    for (name, _), entry in zip(GOLDEN_NAMES.items(), out["models"]):
        assert entry["backend"] == "eager" and entry["trained"], name
        got = torch.load(str(tmp_path / f"{name}.out"), weights_only=True)
        assert torch.equal(got["logits"], load_case(name)["eval"][0]["logits"]), name


def test_installed_flash_attn_and_adam_atan2_are_left_unless_forced():
    out = run_script({"backend": "auto", "force": False, "models": []}, installed=True)
    assert out["flash_attn"] == "flash_attn" and out["adam_atan2"] == "adam_atan2"
    assert out["report"]["flash_attn"] == out["report"]["adam_atan2"] == "left as installed"
    out = run_script({"backend": "auto", "force": True, "models": []}, installed=True)
    assert out["flash_attn"] == "fastrecur.patch.flash_attn" and out["adam_atan2"] == "fastrecur.train.optim"
    assert out["attention_vs_sdpa"] < 1e-6


def test_apply_refuses_bad_arguments_before_changing_anything():
    before = dict(sys.modules)
    with pytest.raises(ValueError, match="backend"):
        fastrecur.patch.apply(backend="gpu")
    with pytest.raises(TypeError, match="force"):
        fastrecur.patch.apply(force="yes")
    assert "models.recursive_reasoning.trm" not in sys.modules and sys.modules.keys() == before.keys()


def test_flash_attn_stand_in_matches_attention_by_hand():
    """Grouped heads, a softmax scale and causal masking against softmax(q k^T * scale + mask) v in fp64."""
    from fastrecur.patch.flash_attn import flash_attn_func

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 4, 8, generator=g, dtype=torch.float64)
    k, v = torch.randn(2, 2, 5, 2, 8, generator=g, dtype=torch.float64).unbind(0)
    got = flash_attn_func(q, k, v, softmax_scale=0.3, causal=True)
    kk, vv = k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, kk) * 0.3
    scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    want = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vv)
    assert torch.allclose(got, want, atol=1e-12)
    with pytest.raises(NotImplementedError, match="window_size"):
        flash_attn_func(q, k, v, window_size=(2, 2))
    with pytest.raises(ValueError, match="not a multiple"):
        flash_attn_func(q, k[:, :, :1].expand(2, 5, 3, 8), v[:, :, :1].expand(2, 5, 3, 8))
