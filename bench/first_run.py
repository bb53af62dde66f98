"""The README's main command on a fresh copy: `snakemake --cores all`, no flags, offline.

Copies this checkout's files (what a clone has) into a scratch folder, runs the default
workflow there as a new user would, and prints where the time went, the clip selection's
F1 against the demo truth, "does it listen?", and the wall clock against the 10-minute goal.

    .venv/bin/python bench/first_run.py [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runs import job_seconds

ROOT = Path(__file__).resolve().parent.parent
GOAL = 600  # seconds on 2 cores (issue 16)


def checkout_copy(dest: Path) -> None:
    """The files a clone of this checkout has (tracked and not ignored), copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    for name in files.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name, follow_symlinks=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soloist-first-run-"))
    checkout_copy(work)
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "all"], cwd=work,
                         capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(run.stderr[-3000:])

    seconds, jobs = job_seconds(work)
    stats = json.loads((work / "results/shards/stats.json").read_text())
    metrics = json.loads((work / "results/evaluate/metrics.json").read_text())

    print(f"snakemake --cores all on a fresh copy, weights: {stats['weights']}")
    print(f"{'rule':<14}{'jobs':>6}{'job seconds':>13}")
    for rule, s in seconds.items():
        print(f"{rule:<14}{jobs[rule]:>6}{s:>13.1f}")
    print(f"{'whole run':<14}{'':>6}{wall:>13.1f}  (wall clock, report included)")
    clip = stats["clip_vs_truth"]
    print(f"clip vs demo truth: precision {clip['precision']:.4f}, recall {clip['recall']:.4f}, "
          f"F1 {clip['f1']:.4f} (goal >= 0.95)")
    print(f"does it listen? listen_ratio {metrics['listen_ratio']:.3f} (goal >= 1.10)")
    print(f"ratio: wall / goal = {wall:.0f} s / {GOAL} s = {wall / GOAL:.2f}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
