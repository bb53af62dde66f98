"""Snakemake's own cost on a large sheet: a dry run and a run in which every job is a no-op.

Builds a copy of the workflow with a sheet of N local-file tracks (empty files: nothing is
read), then times ``snakemake -n shard`` and ``snakemake shard`` with every rule's script
replaced by a stub that only creates the rule's outputs. What is left is the DAG: input
functions, the sheet, job scheduling and bookkeeping.

    .venv/bin/python bench/dag_scale.py --tracks 10000
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUB = """from pathlib import Path

for out in snakemake.output:  # folders have no suffix
    p = Path(out)
    if p.suffix:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    else:
        p.mkdir(parents=True, exist_ok=True)
"""


def make_workflow(dest: Path, tracks: int) -> None:
    for name in ("Snakefile", "rules", "workflow", "config", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    for script in (dest / "workflow/scripts").glob("*.py"):
        script.write_text(STUB)
    audio = dest / "audio"
    audio.mkdir()
    lines = ["track\tsource"]
    for i in range(tracks):
        (audio / f"t{i:05d}.wav").touch()
        lines.append(f"t{i:05d}\t{audio}/t{i:05d}.wav")
    (dest / "tracks.tsv").write_text("\n".join(lines) + "\n")
    weights = dest / "resources/weights/random"
    for family, name in (("demucs", "htdemucs_6s"), ("codec", "encodec_24khz")):
        (weights / family).mkdir(parents=True)
        (weights / family / f"{name}.json").touch()


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=10000)
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args()
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "2", "shard", "--config",
                 "tracks=tracks.tsv", "weights=random", f"batches={args.batches}"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_workflow(work, args.tracks)
        dry, out = timed([*snakemake, "-n"], work)
        jobs = re.search(r"^total\s+(\d+)", out, re.M)
        run, _ = timed(snakemake, work)
        again, out = timed([*snakemake, "-n"], work)
        assert "Nothing to be done" in out, out[-2000:]
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{'tracks':>7}{'batches':>8}{'jobs':>6}{'dry-run s':>11}{'no-op run s':>13}"
          f"{'up-to-date check s':>20}{'peak RSS MB':>13}")
    print(f"{args.tracks:>7}{args.batches:>8}{jobs[1] if jobs else '?':>6}{dry:>11.1f}"
          f"{run:>13.1f}{again:>20.1f}{rss:>13.0f}")


if __name__ == "__main__":
    main()
