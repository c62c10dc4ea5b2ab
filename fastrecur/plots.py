"""Pictures and terminal grids of the recursion (matplotlib is imported only when a PNG is drawn), for
``fastrecur inspect`` and ``fastrecur solve``."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastrecur.data.sudoku import BLANK_CHAR, NOT_A_DIGIT_CHAR, sudoku_cell_chars


def sudoku_violations(digits: np.ndarray, box: Tuple[int, int]) -> np.ndarray:
    """Bool ``[n, n]``: cells whose digit repeats in their row, column or box (0 = empty, never a violation)."""
    n = digits.shape[0]
    bad = np.zeros_like(digits, dtype=bool)
    for r in range(n):
        for c in range(n):
            d = digits[r, c]
            if d == 0:
                continue
            br, bc = (r // box[0]) * box[0], (c // box[1]) * box[1]
            block = digits[br : br + box[0], bc : bc + box[1]]
            bad[r, c] = (digits[r] == d).sum() > 1 or (digits[:, c] == d).sum() > 1 or (block == d).sum() > 1
    return bad


def sudoku_digits(tokens: np.ndarray) -> np.ndarray:
    """Token ids (0 pad, 1 blank, d+1 digit d) -> ``[n, n]`` digits with 0 for blank or out-of-range."""
    n = int(round(tokens.size**0.5))
    d = tokens.astype(np.int64) - 1
    d[(d < 1) | (d > n)] = 0
    return d.reshape(n, n)


def text_grid(pred: np.ndarray, inputs: np.ndarray, prev: Optional[np.ndarray], box: Optional[Tuple[int, int]]) -> str:
    """A Sudoku grid for the terminal: ``[d]`` given, `` d*`` changed since the previous step, `` d!`` violation
    (a repeated digit, or a given the prediction overwrote); cells as :func:`sudoku_cell_chars` (``?``: the pad
    token predicted)."""
    digits, given_digits = sudoku_digits(pred), sudoku_digits(inputs)
    chars = sudoku_cell_chars(pred)
    given = given_digits > 0
    n = digits.shape[0]
    # A violation: a repeated digit, or a given the prediction overwrote.
    bad = (sudoku_violations(digits, box) if box else np.zeros_like(given)) | (given & (digits != given_digits))
    changed = (
        np.zeros_like(given) if prev is None else (np.asarray(prev).reshape(n, n) != np.asarray(pred).reshape(n, n))
    )
    lines = []
    for r in range(n):
        if box and r and r % box[0] == 0:
            lines.append("-" * (4 * n + 2 * (n // box[1] - 1)))
        cells = []
        for c in range(n):
            d = chars[r * n + c]
            mark = "!" if bad[r, c] else "*" if changed[r, c] else " "
            cell = f"[{d}]" if given[r, c] and not bad[r, c] else f" {d}" + mark
            cells.append(cell + (" |" if box and (c + 1) % box[1] == 0 and c + 1 < n else ""))
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("drawing PNGs needs matplotlib: pip install matplotlib") from e
    return plt


def draw_sudoku_steps(
    path: str, inputs: np.ndarray, preds: Sequence[np.ndarray], box: Tuple[int, int], q_halt: Sequence[float]
) -> None:
    """One panel per ACT step: givens bold, violations red, cells changed since the previous step grey."""
    plt = _plt()
    k = len(preds)
    cols = min(k, 4)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    given_digits = sudoku_digits(inputs)
    given = given_digits > 0
    n = given.shape[0]
    prev = None
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= k:
            continue
        digits, chars = sudoku_digits(preds[i]), sudoku_cell_chars(preds[i])
        bad = sudoku_violations(digits, box) | (given & (digits != given_digits))
        changed = np.zeros_like(given) if prev is None else digits != sudoku_digits(prev)
        prev = preds[i]
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)
        for r in range(n):
            for c in range(n):
                if changed[r, c]:
                    ax.add_patch(plt.Rectangle((c, r), 1, 1, color="0.85"))
                char = chars[r * n + c]
                if char != BLANK_CHAR:
                    ax.text(
                        c + 0.5,
                        r + 0.55,
                        char,
                        ha="center",
                        va="center",
                        fontsize=max(6, 60 // n),
                        fontweight="bold" if given[r, c] else "normal",
                        color="red" if bad[r, c] or char == NOT_A_DIGIT_CHAR else "black",
                    )
        for j in range(n + 1):
            lw = 1.6 if j % box[1] == 0 else 0.4
            ax.plot([j, j], [0, n], color="black", lw=lw if j % box[1] == 0 else 0.4)
            ax.plot([0, n], [j, j], color="black", lw=1.6 if j % box[0] == 0 else 0.4)
        ax.set_title(f"step {i + 1}  q_halt {q_halt[i]:+.1f}", fontsize=9)
    fig.suptitle("prediction per ACT step (bold: given, red: violation or ?, grey: changed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_residuals(path: str, residuals: Dict[str, np.ndarray], updates_per_step: int) -> None:
    """Forward residual of each state over all inner updates (log scale), ACT-step boundaries dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, r in residuals.items():
        ax.semilogy(r[:, 0], r[:, 1], marker=".", lw=1, label=name)
    total = max(int(r[:, 0].max()) for r in residuals.values()) + 1
    for b in range(updates_per_step, total, updates_per_step):
        ax.axvline(b - 0.5, color="0.7", ls="--", lw=0.8)
    ax.set_xlabel("inner update (all ACT steps)")
    ax.set_ylabel("||z_t - z_(t-1)|| / ||z_(t-1)||")
    ax.legend()
    ax.set_title("forward residual per state (mean over samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_bars(path: str, values: Dict[str, float], title: str, ylabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(list(values), list(values.values()), color="tab:blue")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_accuracy(path: str, acc: List[float]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(acc) + 1), acc, marker="o")
    ax.set_xlabel("ACT steps run")
    ax.set_ylabel("exact accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("what more thinking buys")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----- ARC grids -----
# The ARC colours 0-9 as the ARC testing interface shows them (black, blue, red, green, yellow, grey, magenta,
# orange, sky, maroon).
ARC_PALETTE = (
    "#000000",
    "#0074D9",
    "#FF4136",
    "#2ECC40",
    "#FFDC00",
    "#AAAAAA",
    "#F012BE",
    "#FF851B",
    "#7FDBFF",
    "#870C25",
)


def arc_text_grid(grid: np.ndarray) -> str:
    """An ARC grid (colours ``[h, w]``) for the terminal: one digit per cell, ``(empty)`` for a 0-size grid."""
    g = np.asarray(grid)
    if g.size == 0:
        return "(empty)"
    return "\n".join(" ".join(str(int(x)) for x in row) for row in g)


def _draw_arc_grid(ax, grid: np.ndarray, title: str) -> None:
    from matplotlib.colors import ListedColormap

    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    g = np.asarray(grid)
    if g.size == 0:
        ax.text(0.5, 0.5, "(empty)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        return
    ax.imshow(g, cmap=ListedColormap(ARC_PALETTE), vmin=-0.5, vmax=9.5, interpolation="nearest")
    h, w = g.shape
    ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
    ax.grid(which="minor", color="0.35", lw=0.4)
    ax.tick_params(which="minor", length=0)


def draw_arc_steps(
    path: str,
    inputs: np.ndarray,
    preds: Sequence[np.ndarray],
    q_halt: Sequence[float],
    target: Optional[np.ndarray] = None,
) -> None:
    """ARC grids in the ARC palette: the input, the prediction after each ACT step (title: q_halt, and right or
    wrong when ``target`` is given), and the target. Each argument is a grid of colours ``[h, w]`` (crop token
    sequences first with :func:`fastrecur.data.arc.crop_grid`)."""
    if len(preds) != len(q_halt):
        raise ValueError(f"preds and q_halt must have one entry per ACT step, got {len(preds)} and {len(q_halt)}")
    plt = _plt()
    panels = [(inputs, "input")]
    for i, (p, q) in enumerate(zip(preds, q_halt)):
        mark = "" if target is None else (" right" if np.array_equal(p, target) else " wrong")
        panels.append((p, f"step {i + 1} q_halt {q:+.1f}{mark}"))
    if target is not None:
        panels.append((target, "target"))
    cols = min(len(panels), 6)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (g, title) in zip(axes.flat, panels):
        _draw_arc_grid(ax, g, title)
    fig.suptitle("ARC: input, prediction per ACT step, target", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
