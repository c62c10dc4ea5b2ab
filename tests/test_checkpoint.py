"""fastrecur.load_checkpoint with the paths the commands take: a run folder, its checkpoints folder, a checkpoint
folder, a file; and true messages for paths it cannot use."""

import os

import pytest
import torch

import fastrecur
from fastrecur.checkpoint import CheckpointError, read_state_dict
from fastrecur.train.state import build_model, read_json


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from fastrecur.data import PuzzleDataset, build_sudoku_dataset
    from fastrecur.train import Trainer
    from test_train import tiny_config as train_config

    root = tmp_path_factory.mktemp("ckpt")
    data = root / "data"
    build_sudoku_dataset(str(data), n=4, num_train=24, num_test=6, num_aug=0, seed=1)
    Trainer(
        train_config(str(data), root / "run", max_steps=2),
        PuzzleDataset(str(data), "train"),
        PuzzleDataset(str(data), "test"),
        log=lambda s: None,
    ).fit()
    return root / "run"


def _fresh_model(folder):
    return build_model(read_json(os.path.join(folder, "config.json")), torch.device("cpu"), "eager")


def test_load_checkpoint_accepts_a_run_folder(run_folder):
    latest = read_json(os.path.join(run_folder, "checkpoints", "latest.json"))
    folder = os.path.join(run_folder, "checkpoints", latest["dir"])
    weights = os.path.join(folder, "ema.safetensors")
    if not os.path.isfile(weights):
        weights = os.path.join(folder, "model.safetensors")
    expected = read_state_dict(weights)
    for path in (run_folder, run_folder / "checkpoints", folder, str(run_folder)):
        head = _fresh_model(folder)
        result = fastrecur.load_checkpoint(head, path)
        assert not result.missing_keys and not result.unexpected_keys
        got = head.model.state_dict()
        for key, value in expected.items():  # the newest checkpoint's weights, key by key, bit for bit
            assert torch.equal(got[key.removeprefix("model.")], value), (path, key)


def test_load_checkpoint_messages_are_true(run_folder, tmp_path):
    folder = os.path.join(run_folder, "checkpoints")
    head = _fresh_model(os.path.join(folder, read_json(os.path.join(folder, "latest.json"))["dir"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastrecur.load_checkpoint(head, tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is neither a run folder") as info:
        fastrecur.load_checkpoint(head, tmp_path / "empty")  # exists: never "does not exist"
    assert "does not exist" not in str(info.value)


def test_dir_lists_the_lazy_public_names():
    # dir(fastrecur) (and tab completion) lists the public names the package loads lazily, each one resolvable.
    names = dir(fastrecur)
    assert {"backends", "load_checkpoint", "save_checkpoint", "__version__"} <= set(names)
    assert set(fastrecur.__all__) <= set(names) and names == sorted(names)
    assert fastrecur.load_checkpoint.__module__ == "fastrecur.checkpoint" and callable(fastrecur.backends)
