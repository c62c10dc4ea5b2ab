"""fastrecur.train: configs, the training loop (carry, exact resume, checkpoints), faults, eval and solve.

Tiny models (hidden 16, one layer) on a tiny generated 4x4 Sudoku set, CPU, one thread.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import fastrecur
from fastrecur.data import PuzzleDataset, build_sudoku_dataset
from fastrecur.train import TrainConfig, Trainer, apply_overrides, load_arch_file, load_model
from fastrecur.train.config import (
    ARCH_PRESETS,
    DATA_KEYS,
    MODEL_CLASSES,
    check_arch_values,
    model_config,
    split_arch,
)
from fastrecur.train.evaluate import evaluate_model
from fastrecur.train.state import CheckpointError, resolve_checkpoint_dir
from test_cli_errors import TINY_ARCH as CLI_TINY_ARCH

# The folder that the fastrecur under test was imported from (the repo when editable, site-packages when
# installed): training subprocesses import the same one.
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastrecur.__file__)))

TINY_ARCH = dict(
    name="TRM",
    H_cycles=2,
    L_cycles=1,
    H_layers=0,
    L_layers=1,
    hidden_size=16,
    num_heads=1,
    expansion=2,
    puzzle_emb_ndim=16,
    puzzle_emb_len=1,
    pos_encodings="rope",
    forward_dtype="float32",
    halt_max_steps=3,
    halt_exploration_prob=0.1,
    no_ACT_continue=True,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sudoku4")
    build_sudoku_dataset(str(d), n=4, num_train=48, num_test=12, num_aug=0, seed=0)
    return str(d)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(data_dir, out_dir, **kw):
    base = dict(
        data_path=data_dir,
        out_dir=str(out_dir),
        arch=dict(TINY_ARCH),
        global_batch_size=8,
        max_steps=12,
        lr=3e-3,
        lr_warmup_steps=2,
        lr_min_ratio=0.1,
        puzzle_emb_lr=1e-2,
        ema=True,
        eval_interval=0,
        checkpoint_interval=0,
        log_interval=4,
        device="cpu",
        progress="none",
        seed=3,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def datasets(data_dir):
    return PuzzleDataset(data_dir, "train"), PuzzleDataset(data_dir, "test")


def weights(trainer):
    return {k: v.clone() for k, v in trainer.head.model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----- configs -----
TRM_YAML = """name: recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1
loss:
  name: losses@ACTLossHead
  loss_type: stablemax_cross_entropy

halt_exploration_prob: 0.1
halt_max_steps: 16

H_cycles: 3
L_cycles: 6

H_layers: 0
L_layers: 2

hidden_size: 512
num_heads: 8  # min(2, hidden_size // 64)
expansion: 4

puzzle_emb_ndim: ${.hidden_size}

pos_encodings: rope
forward_dtype: bfloat16

mlp_t: False # use mlp on L instead of transformer
puzzle_emb_len: 16 # if non-zero, its specified to this value
no_ACT_continue: True # No continue ACT loss
"""


def test_reference_arch_yaml_and_overrides(tmp_path):
    path = tmp_path / "trm.yaml"
    path.write_text(TRM_YAML)
    arch = load_arch_file(str(path))
    assert arch["puzzle_emb_ndim"] == "${.hidden_size}"  # resolved late, so overrides reach it
    arch = apply_overrides(arch, ["hidden_size=64", "arch.H_cycles=2", "mlp_t=true", "num_heads=1"])
    cls, keys, loss = split_arch(arch)
    assert cls == "TRM" and loss == "stablemax_cross_entropy"
    assert keys["puzzle_emb_ndim"] == 64 and keys["H_cycles"] == 2 and keys["mlp_t"] is True and keys["L_cycles"] == 6
    cls, cfg = model_config(arch, {"seq_len": 16, "vocab_size": 6, "num_puzzle_identifiers": 1}, per_rank_batch=4)
    assert cfg["batch_size"] == 4 and cfg["seq_len"] == 16
    assert split_arch(ARCH_PRESETS["hrm"])[0] == "HRM" and split_arch(ARCH_PRESETS["hrm"])[1]["puzzle_emb_ndim"] == 512
    assert split_arch(ARCH_PRESETS["flat"])[0] == "FlatRecurrence"
    json_path = tmp_path / "a.json"
    json_path.write_text('{"name": "SRM", "skip": "none", "hidden_size": 32, "puzzle_emb_ndim": "${.hidden_size}"}')
    assert split_arch(load_arch_file(str(json_path)))[1] == {"skip": "none", "hidden_size": 32, "puzzle_emb_ndim": 32}


def test_arch_yaml_is_read_by_pyyaml(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("name: TRM\nrms_norm_eps: 1e-5\nlr: 3.0e-4\nskip: none\nlayers:\n  - 1\n  - {a: 2}\n")
    assert load_arch_file(str(path)) == {
        "name": "TRM",
        "rms_norm_eps": 1e-5,
        "lr": 3e-4,
        "skip": "none",
        "layers": [1, {"a": 2}],
    }
    path.write_text("name: TRM\nH_cycles: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_arch_file(str(path))
    path.write_text("- 1\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_arch_file(str(path))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="not a model"):
        split_arch({"name": "foo@Bar"})
    with pytest.raises(ValueError, match="refers to"):
        split_arch({"name": "TRM", "puzzle_emb_ndim": "${.nope}"})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["H_cycles"])
    with pytest.raises(ValueError, match="unknown training config"):
        TrainConfig.from_dict({"lrr": 1})
    with pytest.raises(ValueError, match="global_batch_size"):
        TrainConfig(global_batch_size=0).validate()


def _float_flags():
    from fastrecur.train.cli import _FLAGS

    return [name for name, (typ, _) in _FLAGS.items() if typ is float]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", _float_flags())
def test_every_numeric_train_option_refuses_a_non_finite_value_before_any_work(data_dir, tmp_path, capsys, name, value):
    """--lr nan (and every other float option, nan or +-inf) is one line naming the option, status 2, and no run
    folder: refused by TrainConfig.validate, before the first step (it was a TypeError from the optimiser)."""
    from fastrecur.cli import main

    out = tmp_path / "r"
    flag = "--" + name.replace("_", "-")
    assert main(["train", "--data", data_dir, "--out", str(out), "--device", "cpu", f"{flag}={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastrecur train: {name} must be a finite number, got "), err
    assert not out.exists()


@pytest.mark.parametrize(
    "flag,value,says",
    [
        ("--beta1", "1", "beta1 must be in [0, 1), got 1.0"),  # Adam's bias correction 1 - beta1**t would be 0
        ("--beta2", "1.5", "beta2 must be in [0, 1), got 1.5"),
        ("--ema-rate", "-0.1", "ema_rate must be in [0, 1], got -0.1"),
        ("--lr-min-ratio", "2", "lr_min_ratio must be in [0, 1], got 2.0"),
        ("--weight-decay", "-1", "weight_decay must be a number >= 0, got -1.0"),
        ("--puzzle-emb-lr", "-1", "puzzle_emb_lr must be a number >= 0, got -1.0"),
        ("--puzzle-emb-weight-decay", "-1", "puzzle_emb_weight_decay must be a number >= 0, got -1.0"),
        ("--grad-clip-norm", "0", "grad_clip_norm must be > 0 or None, got 0.0"),
        ("--max-minutes", "0", "max_minutes must be > 0 or None, got 0.0"),
        ("--lr-warmup-steps", "-1", "lr_warmup_steps must be an int >= 0, got -1"),
        ("--eval-interval", "-1", "eval_interval must be an int >= 0, got -1"),
        ("--checkpoint-interval", "-1", "checkpoint_interval must be an int >= 0, got -1"),
        ("--log-interval", "0", "log_interval must be an int >= 1, got 0"),
        ("--keep-checkpoints", "0", "keep_checkpoints must be an int >= 1, got 0"),
        ("--eval-batch-size", "0", "eval_batch_size must be an int >= 1 or None, got 0"),
        ("--threads", "0", "threads must be an int >= 1 or None, got 0"),
        ("--epochs", "0", "epochs must be an int >= 1, got 0"),
        ("--seed", "-1", "seed must be an int >= 0, got -1"),
    ],
)
def test_numeric_train_options_out_of_range_are_refused_before_any_work(data_dir, tmp_path, capsys, flag, value, says):
    from fastrecur.cli import main

    out = tmp_path / "r"
    assert main(["train", "--data", data_dir, "--out", str(out), "--device", "cpu", f"{flag}={value}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"fastrecur train: {says}"]
    assert not out.exists()


@pytest.mark.parametrize("arch", ["trm", "hrm", "srm", "flat"])
def test_a_bad_value_is_named_under_the_key_that_holds_it(arch):
    """--set hidden_size=abc: the presets copy hidden_size into puzzle_emb_ndim (``${.hidden_size}``), and the
    model checks puzzle_emb_ndim first; the error must name hidden_size, its value and the type expected."""
    cls = split_arch(ARCH_PRESETS[arch])[0]
    with pytest.raises(TypeError) as e:
        check_arch_values(apply_overrides(ARCH_PRESETS[arch], ["hidden_size=abc"]))
    assert str(e.value) == f"{cls} config: 'hidden_size' must be int, got str ('abc')"
    with pytest.raises(TypeError, match=r"'puzzle_emb_ndim' must be int, got str \('x'\)"):
        check_arch_values(apply_overrides(ARCH_PRESETS[arch], ["puzzle_emb_ndim=x"]))  # a key set directly
    with pytest.raises(TypeError, match=r"'hidden_size' must be int, got str \('abc'\)"):
        TrainConfig(arch=apply_overrides(ARCH_PRESETS[arch], ["hidden_size=abc"])).validate()
    check_arch_values(ARCH_PRESETS[arch])  # the presets themselves pass


@pytest.mark.parametrize(
    "key,value,says",
    [
        ("seq_len", 99, "seq_len=99, but seq_len comes from the dataset's metadata, which gives 16"),
        ("vocab_size", 3, "vocab_size=3, but vocab_size comes from the dataset's metadata, which gives 6"),
        ("num_puzzle_identifiers", "x", "num_puzzle_identifiers='x', but num_puzzle_identifiers comes from the "),
        ("batch_size", 64, "batch_size=64, but batch_size comes from the batch per rank (--global-batch-size / ranks)"),
    ],
)
def test_data_keys_in_the_arch_are_refused_unless_equal_to_the_datasets(key, value, says):
    """seq_len, vocab_size, num_puzzle_identifiers and batch_size come from the dataset and the batch size: an arch
    config or --set giving another value is refused naming both (it was silently ignored); the same value is
    accepted."""
    metadata = dict(seq_len=16, vocab_size=6, num_puzzle_identifiers=1)
    cls, cfg = model_config(TINY_ARCH, metadata, 8)
    assert cls == "TRM" and {k: cfg[k] for k in DATA_KEYS} == dict(metadata, batch_size=8)
    with pytest.raises(ValueError) as e:
        model_config(dict(TINY_ARCH, **{key: value}), metadata, 8)
    assert str(e.value).startswith("arch config: " + says) and str(e.value).endswith(
        f"remove {key} from --set / the arch config"
    )
    assert model_config(dict(TINY_ARCH, **{key: cfg[key]}), metadata, 8) == (cls, cfg)


def test_model_keys_are_what_each_class_accepts():
    """Each class's ``config_keys`` (what the early check reads) are exactly the keys its constructor
    validates: the constructor's own unknown-key error names them."""
    for name, cls in MODEL_CLASSES.items():
        with pytest.raises(ValueError, match="unknown key") as e:
            cls({"not_a_key": 1})
        assert str(e.value).endswith(f"known keys: {sorted(cls.config_keys)}"), name


def test_cli_build_config():
    from fastrecur.train import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    cfg, spec = cli.build_config(
        p.parse_args(
            [
                "--preset",
                "sudoku-4x4-cpu",
                "--out",
                "o",
                "--lr",
                "0.002",
                "--set",
                "hidden_size=32",
                "H_cycles=3",
                "--no-ema",
            ]
        )
    )
    assert (
        spec["n"] == 4
        and cfg.lr == 0.002
        and cfg.arch["hidden_size"] == 32
        and cfg.arch["H_cycles"] == 3
        and cfg.ema is False
    )
    cfg, spec = cli.build_config(p.parse_args(["--data", "d", "--arch", "hrm", "--set", "shared_layers=true"]))
    assert spec is None and cfg.arch["shared_layers"] is True and cfg.out_dir == os.path.join("runs", "hrm")
    with pytest.raises(ValueError, match="--data"):
        cli.build_config(p.parse_args(["--arch", "trm"]))


def test_train_out_default_is_what_the_help_says_and_an_empty_out_is_refused(tmp_path, capsys):
    """--out's help names the default folders and build_config uses them: runs/PRESET, runs/ARCH, runs/default
    (it said runs/<preset or arch> when runs/default was used); --out "" is refused (it meant runs/default)."""
    from fastrecur.cli import main
    from fastrecur.train import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    arch_file = tmp_path / "trm.yaml"
    arch_file.write_text(TRM_YAML)
    out_help = next(a.help for a in p._actions if a.dest == "out")
    assert "runs/PRESET with --preset, runs/ARCH with --arch, or runs/default" in out_help
    for argv, folder in (
        (["--preset", "sudoku-4x4-cpu"], "sudoku-4x4-cpu"),
        (["--preset", "sudoku-4x4-cpu", "--arch", "hrm"], "sudoku-4x4-cpu"),
        (["--arch", "hrm"], "hrm"),
        (["--arch-config", str(arch_file)], "default"),
        ([], "default"),
    ):
        cfg, _ = cli.build_config(p.parse_args(["--data", "d", *argv]))
        assert cfg.out_dir == os.path.join("runs", folder), argv
    for empty in ("", " "):
        assert main(["train", "--data", str(tmp_path), "--out", empty]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "fastrecur train: --out is empty: give the run folder (or leave --out out for the default)"
        ]


def test_every_train_option_has_a_one_line_help(capsys):
    """fastrecur train --help: every option says what it does (many said nothing), on one line of source text;
    the numeric ones show TrainConfig's default, and the intervals say what 0 means."""
    from fastrecur.cli import main
    from fastrecur.train import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    options = [a for a in p._actions if a.option_strings]
    assert set(cli._FLAGS) < {a.dest for a in options}
    for a in options:
        assert a.help and a.help.strip() and "\n" not in a.help, a.option_strings
    helps = {a.dest: a.help for a in options}
    assert helps["eval_interval"] == "evaluate on the test split every N steps (0: only at the end) (default 0)"
    assert helps["checkpoint_interval"] == "write a checkpoint every N steps (0: only at the end) (default 0)"
    defaults = TrainConfig()
    for name in cli._FLAGS:
        value = getattr(defaults, name)
        assert helps[name].endswith(f"(default {value})") == (value is not None), name
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--eval-interval EVAL_INTERVAL\n" in out and "(0: only at the end)" in out


# ----- the loop -----
def test_carry_persists_and_halted_rows_take_new_data(data_dir, tmp_path, one_thread):
    arch = dict(TINY_ARCH, halt_max_steps=2, halt_exploration_prob=0.0)
    cfg = tiny_config(data_dir, tmp_path, arch=arch, ema=False)
    train_ds, _ = datasets(data_dir)
    t = Trainer(cfg, train_ds, None, log=lambda s: None)
    it = train_ds.iter_train(8, seed=cfg.seed)
    b1, b2, b3 = next(it), next(it), next(it)
    t.train_step(b1)
    assert torch.equal(t.carry.current_data["inputs"], b1["inputs"]) and (t.carry.steps == 1).all()
    # q_halt starts at -5 and exploration is off: nobody halts before halt_max_steps=2, so step 2 keeps batch 1.
    t.train_step(b2)
    assert torch.equal(t.carry.current_data["inputs"], b1["inputs"]) and t.carry.halted.all()
    t.train_step(b3)
    assert torch.equal(t.carry.current_data["inputs"], b3["inputs"]) and (t.carry.steps == 1).all()
    adam = t.optimizers[-1]
    assert all(float(adam.state[p]["step"]) == 3 for p in t.params)  # one optimiser step per ACT step
    assert t.step == 3 and t.lr == pytest.approx(
        3e-3 * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(0.1 * torch.pi)).item()))
    )


def test_train_metrics_of_a_window_without_halted_rows_are_empty_not_zero(data_dir, tmp_path, one_thread):
    """Accuracy, exact accuracy, q_halt accuracy and steps average over the rows that halted in the logging window
    (the reference's ``count``); in a window where none did they are empty in metrics.csv and ``n/a`` in the log
    line (they were written as 0.0), while the losses (per sample of the batch) are still written."""
    import csv

    arch = dict(TINY_ARCH, halt_max_steps=3, halt_exploration_prob=0.0)
    cfg = tiny_config(data_dir, tmp_path, arch=arch, ema=False, max_steps=4, log_interval=1, progress="plain")
    lines = []
    Trainer(cfg, datasets(data_dir)[0], None, log=lines.append).fit()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    per_row = ("train_accuracy", "train_exact_accuracy", "train_q_halt_accuracy", "train_steps")
    # q_halt starts at -5 and exploration is off: no row halts before halt_max_steps=3, then every row does.
    for r in rows[:2] + rows[3:]:
        assert all(r[k] == "" for k in per_row) and float(r["train_lm_loss"]) > 0, r
    assert float(rows[2]["train_steps"]) == 3.0 and 0 <= float(rows[2]["train_accuracy"]) <= 1, rows[2]
    shown = [ln for ln in lines if ln.startswith("step ")]
    assert len(shown) == 4 and all(" acc n/a exact n/a steps n/a " in shown[i] for i in (0, 1, 3)), shown
    assert " steps 3.0 " in shown[2] and "n/a" not in shown[2], shown


def test_fit_writes_run_folder_and_eval_matches_reload(data_dir, tmp_path, one_thread):
    out = tmp_path / "run"
    cfg = tiny_config(data_dir, out, eval_interval=6, checkpoint_interval=6, keep_checkpoints=1)
    train_ds, test_ds = datasets(data_dir)
    t = Trainer(cfg, train_ds, test_ds, log=lambda s: None)
    summary = t.fit()
    assert summary["step"] == 12 and 0.0 <= summary["eval"]["accuracy"] <= 1.0
    assert summary["eval"]["count"] == 12 and summary["eval"]["steps"] == 3.0
    ck = resolve_checkpoint_dir(str(out))
    assert os.path.basename(ck) == "step_00000012"
    assert resolve_checkpoint_dir(os.path.join(ck, "model.safetensors")) == ck  # a file inside a checkpoint
    with pytest.raises(CheckpointError, match=r"^checkpoint '[^']*metrics.csv' is a file, not a checkpoint"):
        resolve_checkpoint_dir(str(out / "metrics.csv"))  # a file outside one: named, not its folder
    assert sorted(os.listdir(ck)) == ["config.json", "ema.safetensors", "model.safetensors", "train_state.pt"]
    assert sorted(os.listdir(out / "checkpoints")) == [
        "latest.json",
        "step_00000012",
    ]  # keep_checkpoints=1 pruned step 6
    lines = (out / "metrics.csv").read_text().strip().splitlines()
    assert lines[0].startswith("step,epoch") and [ln.split(",")[0] for ln in lines[1:]] == ["4", "6", "8", "12"]
    # train_state.pt is weights-only loadable (tensors and plain types only)
    state = torch.load(os.path.join(ck, "train_state.pt"), weights_only=True)
    assert (
        state["step"] == 12
        and len(state["ranks"]) == 1
        and state["ranks"][0]["carry"]["inner"]["z_H"].shape == (8, 17, 16)
    )
    # eval/solve rebuild the model from config.json and get the same numbers (EMA copy by default)
    head, info = load_model(str(out))
    assert info["weights"].endswith("ema.safetensors")
    m = evaluate_model(head, test_ds, 8, torch.device("cpu"))
    for k in ("accuracy", "exact_accuracy", "lm_loss", "halt_step"):
        assert m[k] == pytest.approx(summary["eval"][k], abs=1e-6)
    live, _ = load_model(os.path.join(ck, "model.safetensors"))
    assert_same_weights({k: v for k, v in live.model.state_dict().items()}, weights(t))


def test_exact_resume_in_process(data_dir, tmp_path, one_thread):
    train_ds, test_ds = datasets(data_dir)
    full = Trainer(tiny_config(data_dir, tmp_path / "full", max_steps=14), train_ds, None, log=lambda s: None)
    full.fit()
    # 5 steps, checkpoint, then a new trainer resumes and runs to 14 (crossing epoch boundaries: 6 batches/epoch).
    a = Trainer(tiny_config(data_dir, tmp_path / "part", max_steps=14), train_ds, None, log=lambda s: None)
    it = train_ds.iter_train(8, seed=a.config.seed)
    for _ in range(5):
        a.train_step(next(it))
        a.batch_in_epoch += 1
    a.save()
    torch.manual_seed(1234)  # resume must restore the RNG itself
    b = Trainer(
        tiny_config(data_dir, tmp_path / "part", max_steps=14), train_ds, None, resume="auto", log=lambda s: None
    )
    assert b.step == 5 and b.batch_in_epoch == 5 and b.epoch == 0
    b.fit()
    assert b.step == 14
    assert_same_weights(weights(full), weights(b))
    for n in full.ema.shadow:
        assert torch.equal(full.ema.shadow[n], b.ema.shadow[n])


def _train_cmd(data_dir, out, steps):
    return [
        sys.executable,
        "-m",
        "fastrecur.train.cli",
        "--data",
        data_dir,
        "--out",
        str(out),
        "--set",
        "name=TRM",
        "H_cycles=2",
        "L_cycles=1",
        "H_layers=0",
        "L_layers=1",
        "hidden_size=16",
        "num_heads=1",
        "expansion=2",
        "puzzle_emb_ndim=16",
        "puzzle_emb_len=1",
        "forward_dtype=float32",
        "halt_max_steps=3",
        "halt_exploration_prob=0.1",
        "--global-batch-size",
        "8",
        "--max-steps",
        str(steps),
        "--lr",
        "3e-3",
        "--lr-warmup-steps",
        "2",
        "--ema",
        "--checkpoint-interval",
        "5",
        "--log-interval",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--progress",
        "plain",
        "--seed",
        "5",
    ]


def test_sigkill_mid_run_then_resume_matches_uninterrupted(data_dir, tmp_path):
    steps = 40
    env = dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # cwd outside the repository, so `python -m` imports the installed package, not the source tree.
    ref = subprocess.run(
        _train_cmd(data_dir, tmp_path / "ref", steps),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(data_dir, out, steps),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    seen = []
    deadline = time.time() + 240
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 13/") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    killed_at = int(os.path.basename(resolve_checkpoint_dir(str(out)))[len("step_") :])
    assert 10 <= killed_at < steps, "killed before the first checkpoint or after the end"
    resumed = subprocess.run(
        _train_cmd(data_dir, out, steps), env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a, _ = load_model(str(tmp_path / "ref"), use_ema=False)
    b, _ = load_model(str(out), use_ema=False)
    assert_same_weights(a.model.state_dict(), b.model.state_dict())
    a, _ = load_model(str(tmp_path / "ref"))
    b, _ = load_model(str(out))
    assert_same_weights(a.model.state_dict(), b.model.state_dict())
    rows = (out / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, steps + 1))  # redone steps are not logged twice


# ----- faults -----
def _corrupt(path, mode):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if mode == "truncate" else b"\x00garbage" + data[8:])


@pytest.mark.parametrize(
    "victim,mode",
    [
        ("model.safetensors", "truncate"),
        ("model.safetensors", "garbage"),
        ("train_state.pt", "truncate"),
        ("ema.safetensors", "truncate"),
        ("config.json", "truncate"),
    ],
)
def test_corrupted_checkpoint_is_a_clear_error_and_loads_nothing(data_dir, tmp_path, victim, mode, one_thread):
    train_ds, _ = datasets(data_dir)
    t = Trainer(tiny_config(data_dir, tmp_path / "r", max_steps=3), train_ds, None, log=lambda s: None)
    t.fit()
    folder = resolve_checkpoint_dir(str(tmp_path / "r"))
    _corrupt(os.path.join(folder, victim), mode)
    fresh = Trainer(tiny_config(data_dir, tmp_path / "other", max_steps=3, seed=9), train_ds, None, log=lambda s: None)
    before = weights(fresh)
    if victim != "config.json":
        with pytest.raises(CheckpointError) as e:
            fresh.load(folder)
        assert victim in str(e.value) or "truncated" in str(e.value) or "corrupted" in str(e.value)
        assert_same_weights(before, weights(fresh))
        assert fresh.step == 0
    if victim != "train_state.pt":  # eval/solve read the weights (EMA copy by default) and config.json only
        with pytest.raises(CheckpointError):
            load_model(str(tmp_path / "r"), use_ema=victim != "model.safetensors")


def test_bad_latest_pointer_and_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.json").write_text('{"step": 3, "di')
    with pytest.raises(CheckpointError, match="JSON"):
        load_model(str(tmp_path))


# ----- eval and solve commands -----
def test_eval_and_solve_commands(data_dir, tmp_path, capsys, one_thread):
    from fastrecur.train import evaluate, solve

    train_ds, test_ds = datasets(data_dir)
    Trainer(tiny_config(data_dir, tmp_path / "r", max_steps=4), train_ds, test_ds, log=lambda s: None).fit()
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    assert (
        evaluate.run(p.parse_args([str(tmp_path / "r"), data_dir, "--device", "cpu", "--json", "--batch-size", "5"]))
        == 0
    )
    out = capsys.readouterr().out
    assert '"exact_accuracy"' in out and '"count": 12' in out
    p = argparse.ArgumentParser()
    solve.add_arguments(p)
    puzzle = "1..4....2..1.3.."
    assert solve.run(p.parse_args([str(tmp_path / "r"), "--puzzle", puzzle])) == 0
    out = capsys.readouterr().out
    assert out.count("step ") == 3 and "q_halt" in out and "answer: " in out and "-+-" in out
    assert solve.run(p.parse_args([str(tmp_path / "r"), "--puzzle", "1..4"])) == 2


@pytest.mark.parametrize(
    "arch,sets",
    [
        ("hrm", ["H_layers=1", "L_layers=1", "H_cycles=1", "L_cycles=2", "shared_layers=true"]),
        ("trm_mlp", ["H_cycles=2", "L_cycles=1", "L_layers=1", "puzzle_emb_ndim=0", "puzzle_emb_len=0"]),
        ("srm", ["H_cycles=2", "L_cycles=1", "L_layers=1", "skip=none", "grad_cycles=2"]),
        ("flat", ["L_cycles=2", "L_layers=1", "grad_cycles=2"]),
    ],
)
def test_every_arch_trains(data_dir, tmp_path, arch, sets, one_thread):
    small = ["hidden_size=16", "num_heads=1", "expansion=2", "forward_dtype=float32", "halt_max_steps=2"]
    a = apply_overrides(ARCH_PRESETS[arch], small + sets)
    if arch in ("srm", "trm_mlp") and "puzzle_emb_ndim=0" not in sets:
        a["puzzle_emb_len"] = 1
    train_ds, test_ds = datasets(data_dir)
    t = Trainer(
        tiny_config(data_dir, tmp_path, arch=a, max_steps=3, grad_clip_norm=1.0, ema=False),
        train_ds,
        test_ds,
        log=lambda s: None,
    )
    before = weights(t)
    summary = t.fit()
    assert summary["step"] == 3 and summary["eval"]["count"] == 12
    assert any(not torch.equal(before[k], v) for k, v in weights(t).items())
    assert t.model_class == {"hrm": "HRM", "trm_mlp": "TRM", "srm": "SRM", "flat": "FlatRecurrence"}[arch]


# ----- what the run folder needs, checked before any work; a failed save keeps the state -----
def _cli_train(data_dir, out, *extra):
    return [
        "train",
        "--data",
        data_dir,
        "--out",
        str(out),
        "--set",
        *CLI_TINY_ARCH,
        "--global-batch-size",
        "8",
        "--lr-warmup-steps",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--progress",
        "none",
        "--seed",
        "1",
        *extra,
    ]


def test_resume_from_a_run_folder_takes_its_newest_checkpoint(data_dir, tmp_path, capsys, one_thread):
    """--resume RUN (an earlier run's --out) resumes RUN's newest checkpoint, the one RUN/checkpoints/latest.json
    names, exactly as --resume RUN/checkpoints/step_N does; a run folder without latest.json is refused, naming
    the checkpoint folders it holds."""
    from fastrecur.cli import main

    run = tmp_path / "run"
    steps = ("--checkpoint-interval", "2", "--keep-checkpoints", "3", "--no-plot")
    assert main(_cli_train(data_dir, run, "--max-steps", "4", *steps)) == 0
    assert sorted(os.listdir(run / "checkpoints")) == ["latest.json", "step_00000002", "step_00000004"]
    capsys.readouterr()
    by_run, by_step = tmp_path / "by_run", tmp_path / "by_step"
    assert main(_cli_train(data_dir, by_run, "--max-steps", "6", "--no-plot", "--resume", str(run))) == 0
    newest = os.path.join(str(run), "checkpoints", "step_00000004")
    assert f"resumed from {newest} at step 4" in capsys.readouterr().out
    assert main(_cli_train(data_dir, by_step, "--max-steps", "6", "--no-plot", "--resume", newest)) == 0
    a, b = load_model(str(by_run), use_ema=False)[0], load_model(str(by_step), use_ema=False)[0]
    assert_same_weights(a.model.state_dict(), b.model.state_dict())
    os.remove(run / "checkpoints" / "latest.json")
    capsys.readouterr()
    assert main(_cli_train(data_dir, tmp_path / "none", "--max-steps", "6", "--resume", str(run))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"fastrecur train: {str(run)!r} has no checkpoints/latest.json naming its newest complete checkpoint; it "
        "holds checkpoints/step_00000002, checkpoints/step_00000004: give one of them"
    ]
    assert not (tmp_path / "none").exists()


def test_resume_of_another_model_names_the_keys_that_differ(data_dir, tmp_path, capsys, one_thread):
    """--resume of a checkpoint trained with other model options (here hidden_size 16, resumed with 32 and another
    loss) is refused before anything is loaded, naming each differing key of its config.json with both values (it
    was an optimiser-count or a shape error); the run folder asked for is not created."""
    from fastrecur.cli import main

    run = tmp_path / "run"
    assert main(_cli_train(data_dir, run, "--max-steps", "2", "--no-plot")) == 0
    capsys.readouterr()
    other = ("--set", "hidden_size=32", "--loss-type", "softmax_cross_entropy")
    assert main(_cli_train(data_dir, tmp_path / "new", "--max-steps", "4", "--resume", str(run), *other)) == 2
    step = os.path.join(str(run), "checkpoints", "step_00000002")
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fastrecur train: {step!r} holds another model than this run's: hidden_size is 16 there, 32 in this run; "
        "loss_type is 'stablemax_cross_entropy' there, 'softmax_cross_entropy' in this run; give the options it "
        "was trained with (--preset, --arch, --set, --global-batch-size) or another --out"
    ]
    assert not (tmp_path / "new").exists()
    assert main(_cli_train(data_dir, tmp_path / "new", "--max-steps", "4", "--resume", str(run), "--no-plot")) == 0


def test_run_folder_of_a_resume_path(tmp_path):
    from fastrecur.train.state import run_folder_of

    step = tmp_path / "run" / "checkpoints" / "step_00000002"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"")
    (tmp_path / "run" / "checkpoints" / "step_00000004.fallback.pt").write_bytes(b"")
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "step_00000001.fallback.pt").write_bytes(b"")
    run = str(tmp_path / "run")
    assert run_folder_of(run) == run
    assert run_folder_of(run + "/") == run
    assert run_folder_of(run + "/checkpoints") == run
    assert run_folder_of(str(step)) == run
    assert run_folder_of(str(step / "model.safetensors")) == run
    assert run_folder_of(run + "/checkpoints/step_00000004.fallback.pt") == run
    assert run_folder_of(str(tmp_path / "alone" / "step_00000001.fallback.pt")) is None  # the temp folder's
    assert run_folder_of(str(tmp_path / "alone")) is None


def test_resume_without_out_continues_in_the_resumed_run_folder(data_dir, tmp_path, capsys, monkeypatch, one_thread):
    """--resume RUN (or RUN/checkpoints/step_N) without --out writes its checkpoints and metrics into RUN (it
    wrote them to runs/default); a --max-steps the checkpoint has already reached is refused in one line (it
    printed done and did nothing)."""
    from fastrecur.cli import main

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(_cli_train(data_dir, run, "--max-steps", "2", "--no-plot")) == 0
    capsys.readouterr()

    def resume(what, steps):
        argv = _cli_train(data_dir, run, "--max-steps", str(steps), "--no-plot", "--resume", what)
        i = argv.index("--out")
        return main(argv[:i] + argv[i + 2 :])

    assert resume("run", 4) == 0
    assert f"| out: {os.path.normpath('run')}" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["run"]  # no runs/default
    assert sorted(os.listdir(run / "checkpoints")) == ["latest.json", "step_00000002", "step_00000004"]
    assert resume(os.path.join("run", "checkpoints", "step_00000004"), 6) == 0
    assert os.listdir(tmp_path) == ["run"]
    assert sorted(os.listdir(run / "checkpoints")) == ["latest.json", "step_00000004", "step_00000006"]
    with open(run / "metrics.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["2", "4", "6"]
    capsys.readouterr()
    newest = os.path.join("run", "checkpoints", "step_00000006")
    for steps in (6, 3):
        assert resume("run", steps) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"fastrecur train: the checkpoint {newest!r} is already at step 6 and this run stops at step {steps}: "
            "raise --max-steps (or --epochs) to train on"
        ]
    assert sorted(os.listdir(run / "checkpoints")) == ["latest.json", "step_00000004", "step_00000006"]


@pytest.mark.parametrize("mode", ["none", "plain", "tqdm", "auto"])
def test_progress_modes_all_print_the_evaluations(data_dir, tmp_path, capsys, mode, one_thread):
    """--progress picks the progress display only (a tqdm bar for auto/tqdm, a line per --log-interval steps and
    per checkpoint for plain, nothing for none); every mode prints each evaluation's line and the final one."""
    from fastrecur.cli import main

    every = ("--max-steps", "4", "--eval-interval", "2", "--log-interval", "1", "--checkpoint-interval", "2")
    capsys.readouterr()
    assert main(_cli_train(data_dir, tmp_path / "r", *every, "--no-plot", "--progress", mode)) == 0
    out = capsys.readouterr().out
    evals = re.findall(r"\[eval @ step (\d+)\] exact \d\.\d{4} \| token \d\.\d{4}", out)
    assert evals == ["2", "4"], out
    assert re.search(r"^done: step 4 in .* \| eval: exact ", out, flags=re.M), out
    assert (re.findall(r"^step (\d)/4 \| loss", out, flags=re.M) == ["1", "2", "3", "4"]) == (mode == "plain"), out
    assert ("checkpoint saved: step 4 ->" in out) == (mode == "plain"), out
    assert ("4/4 [" in out) == (mode in ("auto", "tqdm")), out  # the tqdm bar


@pytest.mark.parametrize("missing,extra,says", [("safetensors", (), "safetensors"), ("matplotlib", (), "--no-plot")])
def test_train_checks_it_can_write_its_files_before_any_work(
    data_dir, tmp_path, capsys, monkeypatch, missing, extra, says
):
    from fastrecur.cli import main

    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError, as when it is not installed
    out = tmp_path / "run"
    assert main(_cli_train(data_dir, out, "--max-steps", "1", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastrecur train: ") and says in err[0], err
    assert not (out / "metrics.csv").exists() and not (out / "checkpoints").exists()


def test_train_without_plot_needs_no_matplotlib(data_dir, tmp_path, monkeypatch, one_thread):
    from fastrecur.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "run"
    assert main(_cli_train(data_dir, out, "--max-steps", "1", "--no-plot")) == 0
    assert (out / "metrics.csv").exists() and resolve_checkpoint_dir(str(out)) and not (out / "training.png").exists()


def test_run_folder_not_writable_is_refused(tmp_path):
    from fastrecur.train.state import check_run_folder

    blocker = tmp_path / "file"
    blocker.write_text("")
    for create in (True, False):
        with pytest.raises(CheckpointError, match="cannot be written"):
            check_run_folder(str(blocker / "run"), create=create)
    check_run_folder(str(tmp_path / "new" / "run"), create=False)  # can be written, and is not created
    assert sorted(os.listdir(tmp_path)) == ["file"]


def _break_save(monkeypatch):
    import fastrecur.train.state as state_mod

    def broken(model, path):  # the failure of issue 20: safetensors missing when the checkpoint is written
        raise ModuleNotFoundError("No module named 'safetensors'")

    monkeypatch.setattr(state_mod, "save_checkpoint", broken)


def test_failed_save_keeps_the_state_and_resumes_exactly_from_the_fallback(data_dir, tmp_path, monkeypatch, one_thread):
    train_ds, _ = datasets(data_dir)
    full = Trainer(tiny_config(data_dir, tmp_path / "full", max_steps=6), train_ds, None, log=lambda s: None)
    full.fit()
    out = tmp_path / "run"
    _break_save(monkeypatch)
    t = Trainer(tiny_config(data_dir, out, max_steps=6, checkpoint_interval=4), train_ds, None, log=lambda s: None)
    with pytest.raises(CheckpointError, match="safetensors.*--resume") as e:
        t.fit()
    fallback = str(e.value).split("--resume ")[-1]
    assert fallback == str(out / "checkpoints" / "step_00000004.fallback.pt") and os.path.isfile(fallback)
    assert_same_weights(torch.load(fallback, weights_only=True)["state_dict"], weights(t))
    monkeypatch.undo()
    # Resumed from the fallback, the run continues exactly as one that never failed.
    r = Trainer(
        tiny_config(data_dir, out, max_steps=6, checkpoint_interval=4),
        train_ds,
        None,
        resume=fallback,
        log=lambda s: None,
    )
    assert r.step == 4
    r.fit()
    assert_same_weights(weights(full), weights(r))
    for n in full.ema.shadow:
        assert torch.equal(full.ema.shadow[n], r.ema.shadow[n])
    assert os.path.basename(resolve_checkpoint_dir(str(out))) == "step_00000006"


def test_failed_final_save_of_the_train_command_is_one_line_and_keeps_the_run(
    data_dir, tmp_path, capsys, monkeypatch, one_thread
):
    from fastrecur.cli import main
    from fastrecur.train.state import restore_fallback

    out = tmp_path / "run"
    _break_save(monkeypatch)
    assert main(_cli_train(data_dir, out, "--max-steps", "2", "--no-plot")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastrecur train: writing the checkpoint of step 2 failed"), err
    monkeypatch.undo()
    folder = restore_fallback(err[0].split("--resume ")[-1], str(out))
    head, info = load_model(str(out), use_ema=False)
    assert info["folder"] == folder and os.path.basename(folder) == "step_00000002"


def test_failed_evaluation_keeps_the_trained_state(data_dir, tmp_path, one_thread):
    train_ds, test_ds = datasets(data_dir)
    t = Trainer(tiny_config(data_dir, tmp_path / "r", max_steps=3), train_ds, test_ds, log=lambda s: None)

    def fail():
        raise RuntimeError("evaluation failed")

    t.evaluate = fail
    with pytest.raises(RuntimeError, match="evaluation failed"):
        t.fit()
    head, _ = load_model(str(tmp_path / "r"), use_ema=False)
    assert_same_weights(head.model.state_dict(), weights(t))


# ----- a puzzle-embedding table of another size -----
def test_puzzle_embedding_reset_warns_naming_both_shapes():
    from fastrecur.checkpoint import PuzzleEmbeddingResetWarning, load_checkpoint
    from fastrecur.models import TRM

    cfg = dict(TINY_ARCH, batch_size=2, seq_len=16, vocab_size=6, num_puzzle_identifiers=5)
    cfg.pop("name")
    saved = TRM(cfg).state_dict()
    saved["inner.puzzle_emb.weights"] = torch.arange(5 * 16, dtype=torch.float32).view(5, 16)
    model = TRM(dict(cfg, num_puzzle_identifiers=9))
    with pytest.warns(
        PuzzleEmbeddingResetWarning, match=r"shape \(5, 16\), the model's has \(9, 16\).*num_puzzle_identifiers=5"
    ):
        res = load_checkpoint(model, saved)
    assert res.resized == {"inner.puzzle_emb.weights": ((5, 16), (9, 16))}
    # every row is the mean of the saved rows: row r of arange(80).view(5, 16) is 16 r + c, so the mean row is 32 + c
    assert torch.equal(model.inner.puzzle_emb.weights, (32.0 + torch.arange(16.0)).expand(9, 16))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(TRM(cfg), saved)  # same shape: no warning
        bad = dict(saved, **{"inner.lm_head.weight": torch.zeros(1)})
        with pytest.raises(ValueError, match="lm_head"):
            load_checkpoint(model, bad)  # refused before anything is loaded: no warning either


def test_train_command_prints_the_puzzle_embedding_reset(data_dir, tmp_path, capsys, one_thread):
    """Resuming a run on a rebuilt dataset with another number of puzzle identifiers: the command says so."""
    import json
    import shutil

    from fastrecur.cli import main

    out = tmp_path / "run"
    assert main(_cli_train(data_dir, out, "--max-steps", "1", "--no-plot")) == 0
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(data_dir, rebuilt)
    for split in ("train", "test"):
        meta = json.loads((rebuilt / split / "dataset.json").read_text())
        meta["num_puzzle_identifiers"] = 3
        (rebuilt / split / "dataset.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(_cli_train(str(rebuilt), out, "--max-steps", "2", "--no-plot")) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert (
        len(err) == 1
        and err[0].startswith("fastrecur train: warning: ")
        and "(1, 16)" in err[0]
        and "(3, 16)" in err[0]
    ), err
