"""The GPU recipe's figures: what `bench/gpu_recipe.sh` brought back, as a table.

    .venv/bin/python bench/gpu_recipe.py recipe.tgz     (or the folder it unpacks to)

Prints the times, each seed's training, the fit figures beside their controls (mean ±
spread over the seeds) and the issue's targets, one line each.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
from pathlib import Path

from first_run import SOLOS, fit_table

TARGETS = {"in_scale": 0.90, "on_grid": 0.85, "with_band": 0.90}  # issue 34, GPU recipe
FLOORS = SOLOS[2:]
KEYS = {"step", "steps", "train_loss", "valid_loss", "best_valid_loss", "seconds", "wall_seconds"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path, help="recipe.tgz or its unpacked folder")
    folder = ap.parse_args().recipe
    if folder.is_file():
        out = Path(tempfile.mkdtemp(prefix="recipe-"))
        with tarfile.open(folder) as tar:
            tar.extractall(out, filter="data")
        folder = out
    print((folder / "times").read_text().strip())
    seeds = sorted(int(p.name[4:]) for p in folder.glob("seed*") if p.is_dir())
    runs, done = [], []
    for s in seeds:
        if not (folder / f"seed{s}/metrics.json").is_file():
            print(f"seed {s}: no metrics.json (unfinished or failed: seed{s}/seed{s}.log)")
            continue
        done.append(s)
        train = json.loads((folder / f"seed{s}/train.json").read_text())
        runs.append(json.loads((folder / f"seed{s}/metrics.json").read_text()))
        print(f"seed {s}: {json.dumps({k: train[k] for k in sorted(train) if k in KEYS})}")
    stats = json.loads((folder / "seed0/stats.json").read_text())
    print("songs / windows per split: " + ", ".join(
        f"{k} {v['tracks']} / {v['samples']}" for k, v in stats["splits"].items()))
    if runs:
        fit_table(runs, done)
        targets(runs)


def targets(runs: list[dict]) -> None:
    """Each GPU target of issue 34, measured: the level, the distance to the ceiling, the
    margin over the best floor, and the spread over seeds."""
    for figure, goal in TARGETS.items():
        values = [r["fit"]["truth"]["generated"][figure] for r in runs]
        mean, spread = sum(values) / len(values), max(values) - min(values)
        real = sum(r["fit"]["truth"]["real"][figure] for r in runs) / len(runs)
        floors = {f: sum(r["fit"]["truth"][f][figure] for r in runs) / len(runs)
                  for f in FLOORS}
        best = max(floors, key=floors.get)
        print(f"{figure}: {mean:.3f} (target >= {goal}); real - generated {real - mean:.3f} "
              f"(target <= 0.10); generated - best floor ({best}) "
              f"{mean - floors[best]:.3f} (target >= 0.20); spread {spread:.3f} "
              f"(target <= 0.03)")
    ratios = [r["listen_ratio"] for r in runs]
    print(f"ratio: does it listen? lowest seed {min(ratios):.3f} (default run's target >= 1.10)")


if __name__ == "__main__":
    main()
