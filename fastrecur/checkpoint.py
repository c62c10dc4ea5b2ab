"""Loading reference checkpoints and saving fastrecur's, safely (no arbitrary unpickling, atomic writes)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Union

import torch
from torch import nn

PathOrState = Union[str, os.PathLike, Mapping[str, torch.Tensor]]
_PREFIXES = ("_orig_mod.", "module.", "model.")
_PUZZLE_EMB_KEY = "inner.puzzle_emb.weights"
LATEST = "latest.json"  # in a run's checkpoints folder: {"step": N, "dir": "step_N"}, the newest complete one


class CheckpointError(ValueError):
    """A checkpoint that cannot be used or written: missing, truncated, corrupted, from an incompatible run, or a
    run folder that cannot hold one."""


class PuzzleEmbeddingResetWarning(UserWarning):
    """A checkpoint's puzzle-embedding table had another number of rows than the model's: every row of the
    model's table was set to the mean of the saved rows, so the trained per-puzzle embeddings are not in it."""


@dataclass
class LoadResult:
    """What ``load_checkpoint`` did: keys it could not place, and tables it resized."""

    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    resized: Dict[str, tuple] = field(default_factory=dict)


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a torch file with ``weights_only=True`` (never arbitrary pickles)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError("reading .safetensors needs the 'safetensors' package: pip install safetensors") from e
        try:
            return load_file(path)
        except Exception as e:
            raise ValueError(f"checkpoint {path!r} is not a readable safetensors file: {e}") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"checkpoint {path!r} could not be read as a weights-only torch file (truncated, corrupted, or it "
            f"contains objects other than tensors): {e}"
        ) from e
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"checkpoint {path!r} does not hold a state dict of tensors")
    return dict(sd)


def read_json(path: str) -> Dict[str, Any]:
    """A JSON object from ``path``; :class:`CheckpointError` naming it when missing, unreadable or not an object."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path!r} is not readable JSON (truncated or corrupted?): {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path!r} must hold a JSON object")
    return data


def _is_checkpoint_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "model.safetensors"))


def resolve_checkpoint_dir(path: str) -> str:
    """The checkpoint folder for ``path``: a run folder (``OUT``), its ``checkpoints`` folder (both follow
    ``latest.json`` to the newest complete checkpoint), a checkpoint folder, or a file inside one (its
    ``model.safetensors``, say). Raises :class:`CheckpointError` naming ``path`` for anything else (a missing
    path, a file outside a checkpoint folder, a folder that is neither; one that holds ``step_N`` folders but no
    ``latest.json`` gets them listed)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        if not _is_checkpoint_folder(folder):
            raise CheckpointError(
                f"checkpoint {path!r} is a file, not a checkpoint: give a run folder (the --out of fastrecur train), "
                "a checkpoint folder (config.json + model.safetensors) or a file inside one"
            )
        return folder
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    for base in (path, os.path.join(path, "checkpoints")):
        latest = os.path.join(base, LATEST)
        if os.path.isfile(latest):
            info = read_json(latest)
            if not isinstance(info.get("dir"), str):
                raise CheckpointError(f"{latest!r} has no 'dir'")
            return os.path.join(base, info["dir"])
    if _is_checkpoint_folder(path):
        return path
    found = [
        os.path.join(sub, name) if sub else name
        for sub in ("", "checkpoints")
        if os.path.isdir(os.path.join(path, sub))
        for name in sorted(os.listdir(os.path.join(path, sub)))
        if name.startswith("step_")
    ]
    if found:  # no latest.json: none of them is known to be complete (it is written after the folder)
        shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        raise CheckpointError(
            f"{path!r} has no checkpoints/{LATEST} naming its newest complete checkpoint; it holds {shown}: "
            "give one of them"
        )
    raise CheckpointError(
        f"{path!r} is neither a run folder with checkpoints/{LATEST} nor a checkpoint folder "
        "(config.json + model.safetensors)"
    )


def normalize_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip the wrappers' prefixes (``_orig_mod.`` from torch.compile, ``model.`` from the loss head,
    ``module.`` from DDP), in any order, so keys read ``inner.…`` as on a bare ACT model."""
    out = {}
    for k, v in state.items():
        stripped = True
        while stripped:
            stripped = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, stripped = k[len(p) :], True
        out[k] = v
    return out


def load_checkpoint(model: nn.Module, path_or_state_dict: PathOrState, strict: bool = True) -> LoadResult:
    """Load a reference or fastrecur checkpoint into ``model`` (an ACT model or an ``ACTLossHead``).

    - Accepts a path (``.safetensors``, or ``.pt``/``.pth``/any torch file read with ``weights_only=True``),
      a folder as the commands take it (a run folder -- the ``--out`` of ``fastrecur train`` --, its
      ``checkpoints`` folder or one checkpoint folder; :func:`resolve_checkpoint_dir`), whose EMA weights
      ``ema.safetensors`` are read when present (as ``fastrecur solve``/``eval`` without ``--no-ema``), else its
      ``model.safetensors``; or a state dict.
    - Strips ``_orig_mod.``, ``model.`` and ``module.`` prefixes.
    - A puzzle-embedding table (``inner.puzzle_emb.weights``, ``[num_puzzle_identifiers, dim]``) with another
      number of rows is replaced by the mean of the saved rows in every row, as the reference loader does (new
      puzzles start from the average embedding); this loses the trained per-puzzle embeddings, so it warns
      (:class:`PuzzleEmbeddingResetWarning`, naming both shapes) and is recorded in ``LoadResult.resized``.
    - ``strict``: missing or unexpected keys raise ``ValueError`` listing them by name, and nothing is
      loaded; otherwise the matching keys load and the others are reported in the result.

    Raises:
        TypeError: ``model`` is not a module, or ``path_or_state_dict`` is neither a path nor a mapping.
        FileNotFoundError: the path does not exist.
        CheckpointError (a ValueError): a folder that is not a run or checkpoint folder (the message says what
            it holds).
        ValueError: an unreadable file, key mismatches (``strict``), or a tensor of another shape (a
            puzzle-embedding table of another width included). Nothing is loaded then.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    target = model.model if hasattr(model, "model") and hasattr(model, "per_token_loss") else model
    if isinstance(path_or_state_dict, Mapping):
        state = dict(path_or_state_dict)
    elif isinstance(path_or_state_dict, (str, os.PathLike)):
        path = os.fspath(path_or_state_dict)
        if os.path.isdir(path):
            folder = resolve_checkpoint_dir(path)
            path = os.path.join(folder, "ema.safetensors")
            if not os.path.isfile(path):
                path = os.path.join(folder, "model.safetensors")
        state = read_state_dict(path)
    else:
        raise TypeError(f"path_or_state_dict must be a path or a state dict, got {type(path_or_state_dict).__name__}")
    state = normalize_keys(state)
    own = target.state_dict()
    result = LoadResult(
        missing_keys=sorted(set(own) - set(state)),
        unexpected_keys=sorted(set(state) - set(own)),
    )
    if strict and (result.missing_keys or result.unexpected_keys):
        raise ValueError(
            f"checkpoint does not match {type(target).__name__}: missing keys {result.missing_keys}, "
            f"unexpected keys {result.unexpected_keys}"
        )
    if (
        _PUZZLE_EMB_KEY in state
        and _PUZZLE_EMB_KEY in own
        and state[_PUZZLE_EMB_KEY].shape != own[_PUZZLE_EMB_KEY].shape
    ):
        saved, want = state[_PUZZLE_EMB_KEY], own[_PUZZLE_EMB_KEY].shape
        if saved.dim() != 2 or saved.shape[1] != want[1]:
            raise ValueError(
                f"{_PUZZLE_EMB_KEY}: saved shape {tuple(saved.shape)} has another embedding width than {tuple(want)}"
            )
        state[_PUZZLE_EMB_KEY] = saved.mean(dim=0, keepdim=True).expand(want).contiguous()
        result.resized[_PUZZLE_EMB_KEY] = (tuple(saved.shape), tuple(want))
    for k in set(state) & set(own):
        if state[k].shape != own[k].shape:
            raise ValueError(
                f"checkpoint key {k!r} has shape {tuple(state[k].shape)}, the model expects {tuple(own[k].shape)}"
            )
    target.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if _PUZZLE_EMB_KEY in result.resized:
        saved, want = result.resized[_PUZZLE_EMB_KEY]
        warnings.warn(
            f"the checkpoint's puzzle-embedding table {_PUZZLE_EMB_KEY} has shape {saved}, the model's has {want}: "
            f"every row was reset to the mean of the saved rows (as the reference does), so the trained "
            f"per-puzzle embeddings are lost; build the model with num_puzzle_identifiers={saved[0]} to keep them",
            PuzzleEmbeddingResetWarning,
            stacklevel=2,
        )
    return result


def atomic_write(path: Union[str, os.PathLike], write_fn) -> None:
    """Write ``path`` through ``write_fn(tmp_path)`` into a temp file in the same folder, then rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def cpu_state_dict(model: Union[nn.Module, Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """A module's state dict (or a state dict) as detached contiguous CPU tensors, ready to be written."""
    if isinstance(model, nn.Module):
        model = model.state_dict()
    elif not isinstance(model, Mapping):
        raise TypeError(f"model must be an nn.Module or a state dict, got {type(model).__name__}")
    return {k: v.detach().contiguous().cpu() for k, v in model.items()}


def save_checkpoint(model: Union[nn.Module, Mapping[str, torch.Tensor]], path: Union[str, os.PathLike]) -> None:
    """Save ``model``'s state dict (or a state dict) atomically: safetensors for ``*.safetensors``, else
    ``torch.save``. Raises ``ImportError`` for ``.safetensors`` without the safetensors package, ``OSError`` when
    the file cannot be written (no partial file is left)."""
    state = cpu_state_dict(model)
    if os.fspath(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(state, tmp))
    else:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
