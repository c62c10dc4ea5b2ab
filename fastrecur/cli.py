"""The ``fastrecur`` command: ``fastrecur {data,train,eval,solve,bench,inspect} ...``.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and ``run(args)``; it is
imported only when used, so ``fastrecur --help`` stays fast and a missing optional dependency of one
subcommand does not break the others.

Input errors, one mechanism for every command: whatever the user got wrong (an impossible option value, a
missing folder or file, a dataset or checkpoint that does not match the model, a device this machine lacks)
ends with exactly one line ``fastrecur CMD: what is wrong and what to do`` on stderr and exit status 2, no
traceback. The kinds that count as input errors are :data:`INPUT_ERRORS`: :class:`InputError` (raised by the
commands and by the checks below, where the inputs are first seen), ``CheckpointError`` (a checkpoint that
cannot be used) and ``DatasetFormatError`` (a dataset folder that is not in the reference format), plus every
argparse error (:class:`CommandParser`). Anything else is a bug in fastrecur and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Any, Callable, Mapping, Optional, Tuple

SUBCOMMANDS = {
    "data": ("fastrecur.data.cli", "build a puzzle dataset (Sudoku, maze, ARC-AGI) in the reference format"),
    "train": ("fastrecur.train.cli", "train HRM/TRM/SRM/flat with the reference recipe"),
    "eval": ("fastrecur.train.evaluate", "exact accuracy of a checkpoint on a dataset"),
    "solve": ("fastrecur.train.solve", "solve one puzzle, printing the prediction after each ACT step"),
    "bench": ("fastrecur.bench", "benchmark suite: kernels, models (vs the GEMM floor), launch counters"),
    "inspect": ("fastrecur.inspect.cli", "plots of the recursion: per-step grids, residuals, participation ratio"),
}

INPUT_ERROR_STATUS = 2


class InputError(ValueError):
    """A command's input is wrong (not a bug in fastrecur): the message says what is wrong and what to do.

    A ``ValueError``, so library callers that catch ``ValueError`` keep working."""


def input_error_types() -> Tuple[type, ...]:
    """The exception types reported as input errors: :class:`InputError` (the dataset format's errors among them)
    and the checkpoint errors (imported here, when a command has failed, so that ``fastrecur --help`` imports
    nothing heavy)."""
    from fastrecur.checkpoint import CheckpointError

    return InputError, CheckpointError  # fastrecur.data's DatasetFormatError is an InputError


def report_input_error(command: str, message: Any) -> int:
    """Print ``fastrecur COMMAND: message`` as one line on stderr; return the input-error exit status (2)."""
    text = " ".join(str(message).split()) or "invalid input"
    print(f"{('fastrecur ' + command).strip()}: {text}", file=sys.stderr)
    return INPUT_ERROR_STATUS


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line ``PROG: message (see PROG --help)`` on stderr and exit
    status 2, instead of argparse's usage block. Sub-parsers made with ``add_subparsers`` inherit it."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        report_input_error(self.prog.removeprefix("fastrecur").strip() or "", f"{message} (see {self.prog} --help)")
        sys.exit(INPUT_ERROR_STATUS)


def run_command(command: str, run: Callable[[argparse.Namespace], Optional[int]], args: argparse.Namespace) -> int:
    """``run(args)`` with input errors (:func:`input_error_types`) reported as one line and exit status 2, and
    warnings (``warnings.warn``, e.g. a checkpoint's puzzle embeddings reset) as one line
    ``fastrecur COMMAND: warning: ...`` on stderr."""
    with warnings.catch_warnings():  # restores warnings.showwarning afterwards
        warnings.showwarning = lambda message, *_, **__: print(
            f"fastrecur {command}: warning: {message}", file=sys.stderr
        )
        try:
            return int(run(args) or 0)
        except Exception as e:  # noqa: BLE001 -- re-raised unless it is an input error
            if isinstance(e, input_error_types()):
                return report_input_error(command, e)
            raise


def add_inference_arguments(parser: argparse.ArgumentParser, device_default: str = "cpu") -> None:
    """The options every command that runs a trained model shares (eval, solve): --device, --backend,
    --halting, --steps, --no-ema."""
    parser.add_argument("--device", default=device_default, help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "eager", "triton", "cpp"),
        help="auto (default): the fastest backend here (the C++ loop on the CPU when built)",
    )
    parser.add_argument(
        "--halting",
        default="max_steps",
        choices=("max_steps", "q"),
        help="max_steps (default, the reference's evaluation): every row runs the steps; q: each row stops where "
        "its Q head says halt",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="ACT steps (default: the model's halt_max_steps; more continue the same recursion)",
    )
    parser.add_argument(
        "--no-ema", action="store_true", help="use the live weights even if the checkpoint has an EMA copy"
    )


# ---------------------------------------------------------------------------------------------------------
# argparse value types: an impossible value is an argparse error, i.e. one line naming the option
# ---------------------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """``type=`` for options that must be an int >= 1."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """``type=`` for options that must be an int >= 0."""
    return _bounded_int(text, 0)


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """``type=`` for options that must be an int in ``lo..hi`` (the error names both bounds)."""
    return lambda text: _bounded_int(text, lo, hi)


def _bounded_int(text: str, lo: int, hi: Optional[int] = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise argparse.ArgumentTypeError(f"must be {f'>= {lo}' if hi is None else f'in {lo}..{hi}'}, got {value}")
    return value


# ---------------------------------------------------------------------------------------------------------
# Checks where the inputs are first seen
# ---------------------------------------------------------------------------------------------------------
def resolve_device(name: str):
    """``torch.device`` for a ``--device`` value: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``,
    ``cuda:N``, or any device type torch knows. Raises :class:`InputError` for a name torch does not know, or a
    device this machine lacks (no CUDA, or no CUDA device N)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"--device {name!r} is not a device name; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: this machine has no usable CUDA device; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {name}: fastrecur runs on cpu or cuda")
    return dev


def check_output_dir(path: str, option: str = "--out", try_write: bool = False) -> None:
    """Raise :class:`InputError` when the output folder ``path`` cannot be a folder: it exists as a file, or a
    file sits where one of its parent folders would be. With ``try_write``, also when it cannot be created or
    written (``/proc/x``, a read-only mount, even as root): the folder is made, a probe file written and removed
    in it, and the folders made are removed again, so nothing is left behind and the error comes before any
    work."""
    import os

    if try_write:
        import tempfile

        check_output_dir(path, option)
        made = []  # the missing folders, deepest first
        p = os.path.abspath(os.fspath(path))
        while not os.path.exists(p) and os.path.dirname(p) != p:
            made.append(p)
            p = os.path.dirname(p)
        try:
            os.makedirs(path, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            reason = e.strerror or str(e)
            raise InputError(
                f"{option} {path!r}: cannot create or write this folder ({reason}); choose another {option}"
            )
        finally:
            for folder in made:
                try:
                    os.rmdir(folder)
                except OSError:  # not made here after all, or not empty: leave it
                    break
        return

    p = os.path.abspath(os.fspath(path))
    while p and not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent
    if not os.path.isdir(p):
        raise InputError(f"{option} {path!r}: {p!r} is a file, not a folder; choose another {option}")
    if not os.access(p, os.W_OK):
        raise InputError(f"{option} {path!r}: {p!r} is not writable; choose another {option}")


def _get(obj: Any, key: str):
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def check_dataset_matches_model(
    model_config: Any, metadata: Any, dataset: str = "the dataset", model: str = "the model"
) -> None:
    """Raise :class:`InputError` unless a dataset (its ``dataset.json`` metadata: ``seq_len``, ``vocab_size``,
    ``num_puzzle_identifiers``) can be fed to a model built for another (its config: the same keys and
    ``puzzle_emb_ndim``), naming both values and what to do.

    The sequence length and the vocabulary must be equal (a token id means something else in another
    vocabulary); the dataset's puzzle identifiers must fit the model's embedding table when it has one.
    ``model_config``/``metadata`` may be mappings or objects with those attributes."""
    advice = "use a dataset built like the one the model was trained on (same fastrecur data command and size)"
    m_len, d_len = int(_get(model_config, "seq_len")), int(_get(metadata, "seq_len"))
    if m_len != d_len:
        raise InputError(f"{model} takes sequences of {m_len} tokens but {dataset} has seq_len {d_len}: {advice}")
    m_voc, d_voc = int(_get(model_config, "vocab_size")), int(_get(metadata, "vocab_size"))
    if m_voc != d_voc:
        raise InputError(f"{model} has a vocabulary of {m_voc} tokens but {dataset} has {d_voc}: {advice}")
    ndim = (
        _get(model_config, "puzzle_emb_ndim")
        if hasattr(model_config, "puzzle_emb_ndim")
        or (isinstance(model_config, Mapping) and "puzzle_emb_ndim" in model_config)
        else 0
    )
    m_ids, d_ids = int(_get(model_config, "num_puzzle_identifiers")), int(_get(metadata, "num_puzzle_identifiers"))
    if int(ndim or 0) > 0 and d_ids > m_ids:
        raise InputError(
            f"{model} embeds {m_ids} puzzle identifiers but {dataset} has {d_ids}: {advice} "
            "(for new puzzles, fine-tune its embeddings with fastrecur train --freeze-weights)"
        )


# ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = CommandParser(prog="fastrecur", description="Recursive reasoning models, fast.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        return report_input_error("", f"unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}")
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
    except ImportError as e:
        return report_input_error(name, f"not available in this installation ({e})")
    sub_parser = CommandParser(prog=f"fastrecur {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return run_command(name, module.run, args)


if __name__ == "__main__":  # python -m fastrecur.cli: run the imported module, whose InputError the commands raise
    from fastrecur.cli import main as _main

    sys.exit(_main())
