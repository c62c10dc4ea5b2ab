"""The seeds' comparison, reproduced small: HRM, layer-shared HRM, flat recurrence, TRM, SRM and SRM without
skips trained on the same generated Sudoku, with the same seeds, data, optimiser and CPU budget.

    python benchmarks/ablation.py --minutes 3 --out runs/ablation

Every model gets the same budget of wall-clock minutes (and the same step cap), the same batches (same data
seed), hidden size, attention with learned positions (HRM has no position-free variant) and 12 block passes
per ACT step. Writes ``ablation.json``, ``ablation.md`` (the table for the README) and ``ablation.png``
(exact test accuracy versus optimiser steps). Numbers are what this run measured on this machine; they are
small-scale and say little about the papers' 9x9 results, which the markdown puts beside them.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import time

import torch

COMMON = dict(
    hidden_size=64,
    num_heads=2,
    expansion=4,
    puzzle_emb_ndim=0,
    pos_encodings="learned",
    forward_dtype="float32",
    halt_max_steps=8,
    halt_exploration_prob=0.1,
)
# 12 block passes per ACT step each (HRM: 6 level calls x 2 blocks; flat: 3 x 4; TRM: 6 x 2; SRM: 6 x 2).
VARIANTS = {
    "HRM": dict(name="HRM", H_cycles=2, L_cycles=2, H_layers=2, L_layers=2),
    "HRM layer-shared": dict(name="HRM", H_cycles=2, L_cycles=2, H_layers=2, L_layers=2, shared_layers=True),
    "flat recurrence": dict(name="FlatRecurrence", L_cycles=3, L_layers=4),
    "TRM": dict(name="TRM", H_cycles=2, L_cycles=2, H_layers=0, L_layers=2, puzzle_emb_len=0),
    "SRM": dict(name="SRM", H_cycles=2, L_cycles=3, H_layers=0, L_layers=2, puzzle_emb_len=0, skip="segment"),
    "SRM no skip": dict(name="SRM", H_cycles=2, L_cycles=3, H_layers=0, L_layers=2, puzzle_emb_len=0, skip="none"),
}
# Reported by the papers on Sudoku-Extreme (9x9), for context only.
PAPERS = {
    "HRM": "55.0 (HRM paper)",
    "HRM layer-shared": "matches or slightly beats HRM (Ge 2025)",
    "flat recurrence": "similar to HRM (Ge, Liao & Poggio 2025)",
    "TRM": "74.7 attention / 87.4 MLP (TRM paper)",
    "SRM": "matches TRM (Liao & Poggio 2025)",
    "SRM no skip": "substantially below SRM (Liao & Poggio 2025)",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget per model")
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--size", type=int, default=4, choices=(4, 6, 9), help="Sudoku side")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--eval-interval", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", help="subset of variants")
    p.add_argument("--out", default="runs/ablation")
    a = p.parse_args(argv)

    from fastrecur.data import PuzzleDataset, build_sudoku_dataset
    from fastrecur.train import Trainer
    from fastrecur.train.config import TrainConfig

    data = os.path.join(a.out, f"sudoku-{a.size}x{a.size}")
    if not os.path.exists(os.path.join(data, "test", "dataset.json")):
        build_sudoku_dataset(data, n=a.size, num_train=a.train, num_test=a.test, num_aug=0, seed=a.seed)
    train_ds, test_ds = PuzzleDataset(data, "train"), PuzzleDataset(data, "test")
    results = {}
    for label, arch in VARIANTS.items():
        if a.only and label not in a.only:
            continue
        out = os.path.join(a.out, label.replace(" ", "_"))
        cfg = TrainConfig(
            data_path=data,
            out_dir=out,
            arch={**COMMON, **arch},
            global_batch_size=64,
            epochs=100000,
            max_steps=a.max_steps,
            max_minutes=a.minutes,
            lr=1e-3,
            lr_min_ratio=0.1,
            lr_warmup_steps=100,
            eval_interval=a.eval_interval,
            checkpoint_interval=0,
            log_interval=50,
            device="cpu",
            seed=a.seed,
            threads=1,
            progress="none",
        )
        torch.manual_seed(a.seed)
        t0 = time.time()
        trainer = Trainer(cfg, train_ds, test_ds, log=lambda s: None)
        n_params = sum(p.numel() for p in trainer.head.model.parameters())
        trainer.fit()
        curve = []
        with open(os.path.join(out, "metrics.csv")) as f:
            for row in csv.DictReader(f):
                if row.get("eval_exact_accuracy"):
                    curve.append((int(row["step"]), float(row["eval_exact_accuracy"]), float(row["eval_accuracy"])))
        results[label] = {
            "params": n_params,
            "seconds": round(time.time() - t0, 1),
            "curve": curve,
            "final_exact": curve[-1][1] if curve else None,
            "best_exact": max((c[1] for c in curve), default=None),
            "steps": curve[-1][0] if curve else 0,
        }
        print(
            f"{label:18s} params {n_params:8d}  steps {results[label]['steps']:5d}  exact "
            f"{results[label]['final_exact']}",
            flush=True,
        )

    meta = {
        "date": datetime.date.today().isoformat(),
        "device": f"CPU {platform.machine()}, 1 thread",
        "torch": torch.__version__,
        "budget_minutes": a.minutes,
        "max_steps": a.max_steps,
        "sudoku": f"{a.size}x{a.size}",
        "train": a.train,
        "test": a.test,
        "seed": a.seed,
    }
    with open(os.path.join(a.out, "ablation.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    lines = [
        f"Generated {a.size}x{a.size} Sudoku ({a.train} train / {a.test} test puzzles), {a.minutes} min or "
        f"{a.max_steps} steps per "
        f"model on {meta['device']}, torch {meta['torch']}, {meta['date']}, seed {a.seed}.",
        "",
        "| model | params | steps run | test exact acc (final) | best | papers (Sudoku-Extreme 9x9) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        lines.append(
            f"| {label} | {r['params']:,} | {r['steps']} | {fmt(r['final_exact'])} | {fmt(r['best_exact'])} | "
            f"{PAPERS[label]} |"
        )
    with open(os.path.join(a.out, "ablation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for label, r in results.items():
            if r["curve"]:
                ax.plot([c[0] for c in r["curve"]], [c[1] for c in r["curve"]], marker=".", label=label)
        ax.set_xlabel("optimiser steps")
        ax.set_ylabel("test exact accuracy")
        ax.set_title(f"{a.size}x{a.size} Sudoku, same budget per model")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "ablation.png"), dpi=110)
    except ImportError:
        print("matplotlib missing: no plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
