"""The checkpoint folder of a training run, and everything needed to resume it exactly.

Layout (``OUT`` is the run's output folder)::

    OUT/config.json                     model + training config (also copied into every checkpoint)
    OUT/checkpoints/latest.json         {"step": N, "dir": "step_0000000N"}: written last, atomically
    OUT/checkpoints/step_0000000N/
        model.safetensors               live weights (state-dict keys ``inner.…``, loadable by load_checkpoint)
        ema.safetensors                 the EMA copy (only with EMA); eval/solve use it by default
        config.json                     what eval/solve need to rebuild the model
        train_state.pt                  optimiser states, step, data position (epoch, batch), elapsed time, and
                                        per rank the ACT carry and RNG states (torch CPU/CUDA, numpy, python);
                                        tensors and plain types only (``torch.load(weights_only=True)``)

Every file is written through :func:`fastrecur.checkpoint.atomic_write` and ``latest.json`` only after the
folder is complete, so a run killed at any moment resumes from the last complete checkpoint. Reading
validates every file before anything is applied: a truncated or corrupted checkpoint raises
:class:`CheckpointError` and leaves the model untouched.

Before training, :func:`check_run_folder` proves that the run folder can be written (the packages its files
need, a writable folder). If writing a checkpoint fails all the same (a full disk, a folder made read-only),
:func:`write_fallback` puts the whole state in one ``torch.save`` file (``OUT/checkpoints/step_N.fallback.pt``,
else in the temp folder); ``fastrecur train --resume FILE`` (:func:`restore_fallback`) turns it back into a
checkpoint folder and resumes from it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from fastrecur.checkpoint import (
    LATEST,
    CheckpointError,
    atomic_write,
    cpu_state_dict,
    read_json,
    read_state_dict,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from fastrecur.models import ACTCarry, ACTLossHead, InnerCarry

from .config import MODEL_CLASSES

FORMAT = "fastrecur-run-checkpoint"
VERSION = 1


# ----- before training: can the run folder be written? -----
def check_run_folder(out_dir: str, plot: bool = True, create: bool = True) -> None:
    """Raise :class:`CheckpointError` (before any work) unless a run's files can be written into ``out_dir``:
    ``safetensors`` (the weights) imports, ``matplotlib`` (``training.png``) imports when ``plot``, and ``out_dir``
    can be written (a temporary file is written and removed). With ``create`` the folder is created; without it
    nothing is created: the temporary file goes into ``out_dir`` if it exists, else into its nearest existing
    parent, where ``out_dir`` will be created (``fastrecur train`` checks so before its inputs are all validated,
    so that an input error leaves no empty run folder behind)."""
    try:
        import safetensors.torch  # noqa: F401
    except ImportError as e:
        raise CheckpointError(
            f"checkpoints are written with safetensors, which cannot be imported ({e}): "
            "pip install safetensors (a dependency of fastrecur: reinstall it)"
        ) from None
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise CheckpointError(
                f"the training plot needs matplotlib, which cannot be imported ({e}): "
                "pip install 'fastrecur[plot]', or train with --no-plot"
            ) from None
    folder = os.path.abspath(out_dir)
    while not create and not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        if create:
            os.makedirs(out_dir, exist_ok=True)
        elif not os.path.isdir(folder):
            raise NotADirectoryError(errno.ENOTDIR, f"{folder!r} is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise CheckpointError(
            f"the run folder {out_dir!r} cannot be written ({e.strerror or e}): choose another --out"
        ) from None


# ----- JSON -----
def write_json(path: str, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text + "\n")

    atomic_write(path, write)


# ----- RNG states -----
def rng_state(device: torch.device) -> Dict[str, Any]:
    """Every RNG the run may draw from, as tensors and plain types."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached": float(np_cached),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----- ACT carry -----
def carry_to_state(carry: Optional[ACTCarry]) -> Optional[Dict[str, Any]]:
    if carry is None:
        return None
    cpu = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
    return {
        "inner": {k: cpu(v) for k, v in carry.inner_carry.as_dict().items()},
        "steps": cpu(carry.steps),
        "halted": cpu(carry.halted),
        "current_data": {k: cpu(v) for k, v in carry.current_data.items()},
    }


def carry_from_state(state: Optional[Mapping[str, Any]], device: torch.device) -> Optional[ACTCarry]:
    if state is None:
        return None
    try:
        return ACTCarry(
            inner_carry=InnerCarry(**{k: v.to(device) for k, v in state["inner"].items()}),
            steps=state["steps"].to(device),
            halted=state["halted"].to(device),
            current_data={k: v.to(device) for k, v in state["current_data"].items()},
        )
    except (KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"the saved ACT carry is malformed: {e!r}") from e


# ----- paths -----
def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def run_folder_of(path: str) -> Optional[str]:
    """The run folder that ``path`` (what ``--resume`` takes) belongs to, or None: a run folder (it has a
    ``checkpoints`` folder) itself, ``RUN`` for ``RUN/checkpoints``, ``RUN/checkpoints/step_N``, a file inside
    that (``model.safetensors``) or ``RUN/checkpoints/step_N.fallback.pt``; None for a checkpoint folder or
    fallback file outside a run folder (the temp folder). Spelled as given (normalised), not made absolute."""
    p = os.path.normpath(os.fspath(path))
    if os.path.isfile(p):
        p = os.path.dirname(p) or "."
    if os.path.isdir(os.path.join(p, "checkpoints")):
        return p
    for up in (p, os.path.dirname(p)):
        if os.path.basename(os.path.abspath(up)) == "checkpoints":
            return os.path.dirname(up) or "."
    return None


def latest_checkpoint(out_dir: str) -> Optional[str]:
    """The latest complete checkpoint folder of a run, or None if it has none yet."""
    if not os.path.isfile(os.path.join(out_dir, "checkpoints", LATEST)):
        return None
    return resolve_checkpoint_dir(out_dir)


# ----- save -----
Weights = Union[torch.nn.Module, Mapping[str, torch.Tensor]]


def save_run_checkpoint(
    out_dir: str,
    step: int,
    *,
    model: Weights,
    ema_model: Optional[Weights],
    config_json: Dict[str, Any],
    train_state: Dict[str, Any],
    keep: int = 2,
) -> str:
    """Write a complete checkpoint folder, then point ``latest.json`` at it, then prune old ones (keeping
    ``keep``). ``model``/``ema_model``: modules or state dicts. Returns the folder."""
    root = os.path.join(out_dir, "checkpoints")
    folder = os.path.join(root, step_dir_name(step))
    os.makedirs(folder, exist_ok=True)
    save_checkpoint(model, os.path.join(folder, "model.safetensors"))
    if ema_model is not None:
        save_checkpoint(ema_model, os.path.join(folder, "ema.safetensors"))
    elif os.path.exists(os.path.join(folder, "ema.safetensors")):
        os.remove(os.path.join(folder, "ema.safetensors"))
    write_json(os.path.join(folder, "config.json"), config_json)
    payload = dict(train_state, format=FORMAT, version=VERSION)
    atomic_write(os.path.join(folder, "train_state.pt"), lambda tmp: torch.save(payload, tmp))
    write_json(os.path.join(root, LATEST), {"step": step, "dir": step_dir_name(step)})
    old = sorted(d for d in os.listdir(root) if d.startswith("step_") and d != step_dir_name(step))
    for d in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    return folder


FALLBACK_FORMAT = "fastrecur-run-fallback"


def write_fallback(
    out_dir: str,
    step: int,
    *,
    model: Weights,
    ema_model: Optional[Weights],
    config_json: Dict[str, Any],
    train_state: Dict[str, Any],
) -> str:
    """Everything :func:`save_run_checkpoint` would have written, in one ``torch.save`` file (tensors and plain
    types only, so ``torch.load(weights_only=True)`` reads it; ``state_dict`` holds the weights, so
    ``fastrecur.load_checkpoint`` reads it too): ``OUT/checkpoints/step_N.fallback.pt``, or the temp folder when
    that cannot be written. Returns its path; raises the last ``OSError`` if neither place can be written."""
    payload = {
        "format": FALLBACK_FORMAT,
        "version": VERSION,
        "step": step,
        "state_dict": cpu_state_dict(model),
        "ema_state_dict": cpu_state_dict(ema_model) if ema_model is not None else None,
        "config_json": json.dumps(config_json, sort_keys=True, default=str),
        "train_state": dict(train_state, format=FORMAT, version=VERSION),
    }
    name = f"{step_dir_name(step)}.fallback.pt"
    error: Optional[OSError] = None
    for folder in (
        os.path.join(out_dir, "checkpoints"),
        os.path.join(tempfile.gettempdir(), f"fastrecur-{os.path.basename(os.path.abspath(out_dir))}"),
    ):
        path = os.path.join(folder, name)
        try:
            atomic_write(path, lambda tmp: torch.save(payload, tmp))
            return path
        except OSError as e:
            error = e
    raise error


def restore_fallback(path: str, out_dir: str) -> str:
    """Write the checkpoint folder held by a :func:`write_fallback` file into ``out_dir`` (as
    :func:`save_run_checkpoint`, ``latest.json`` included) and return it."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path!r} could not be read (truncated or corrupted?): {e}") from e
    if not isinstance(data, dict) or data.get("format") != FALLBACK_FORMAT:
        raise CheckpointError(f"{path!r} is not a fastrecur fallback file")
    state = {k: v for k, v in data["train_state"].items() if k not in ("format", "version")}
    return save_run_checkpoint(
        out_dir,
        data["step"],
        model=data["state_dict"],
        ema_model=data["ema_state_dict"],
        config_json=json.loads(data["config_json"]),
        train_state=state,
        keep=10**9,
    )


# ----- load -----
def read_model_state(folder: str, use_ema: bool) -> Tuple[Dict[str, torch.Tensor], str]:
    """The weights of a checkpoint folder (the EMA copy when ``use_ema`` and present) and the file read."""
    path = os.path.join(folder, "ema.safetensors")
    if not (use_ema and os.path.isfile(path)):
        path = os.path.join(folder, "model.safetensors")
    try:
        return read_state_dict(path), path
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(str(e)) from e


def read_train_state(folder: str) -> Dict[str, Any]:
    path = os.path.join(folder, "train_state.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path!r} does not exist: this checkpoint cannot resume training")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path!r} could not be read (truncated or corrupted?): {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a fastrecur training state")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path!r} has version {state.get('version')}, this fastrecur reads version {VERSION}")
    for key in ("step", "epoch", "batch_in_epoch", "optimizers", "ranks", "world_size"):
        if key not in state:
            raise CheckpointError(f"{path!r} lacks {key!r}")
    return state


def build_model(config_json: Mapping[str, Any], device: torch.device, backend: str = "auto") -> ACTLossHead:
    """An ``ACTLossHead`` around the model described by a checkpoint's ``config.json``."""
    try:
        cls = MODEL_CLASSES[config_json["model_class"]]
        model_cfg = dict(config_json["model_config"])
        loss_type = config_json.get("loss_type", "stablemax_cross_entropy")
    except KeyError as e:
        raise CheckpointError(f"config.json lacks {e}: not written by fastrecur train?") from None
    with torch.device(device):
        return ACTLossHead(cls(model_cfg, backend=backend), loss_type=loss_type)


def load_model(
    path: str, device: Any = "cpu", *, use_ema: bool = True, backend: str = "auto"
) -> Tuple[ACTLossHead, Dict[str, Any]]:
    """Rebuild a trained model from a run folder, checkpoint folder or weights file; returns ``(loss head in
    eval mode, info)`` where ``info`` has ``config`` (the config.json), ``folder`` and ``weights`` (file read)."""
    from fastrecur.checkpoint import load_checkpoint

    device = torch.device(device)
    path = os.fspath(path)
    if path.endswith(".safetensors") and os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        try:
            state, weights = read_state_dict(path), path
        except (ValueError, FileNotFoundError) as e:
            raise CheckpointError(str(e)) from e
    else:
        folder = resolve_checkpoint_dir(path)
        state, weights = read_model_state(folder, use_ema)
    config_json = read_json(os.path.join(folder, "config.json"))
    head = build_model(config_json, device, backend)
    from fastrecur.backend import check_available

    check_available(backend, torch.device(device), head.model.config)  # ValueError naming why not
    try:
        load_checkpoint(head, state, strict=True)
    except ValueError as e:
        raise CheckpointError(f"{weights!r} does not match its config.json: {e}") from e
    head.eval()
    return head, {"config": config_json, "folder": folder, "weights": weights}


__all__ = [
    "CheckpointError",
    "build_model",
    "carry_from_state",
    "carry_to_state",
    "check_run_folder",
    "latest_checkpoint",
    "load_model",
    "read_json",
    "read_model_state",
    "read_train_state",
    "resolve_checkpoint_dir",
    "restore_fallback",
    "rng_state",
    "run_folder_of",
    "save_run_checkpoint",
    "set_rng_state",
    "write_fallback",
    "write_json",
]
