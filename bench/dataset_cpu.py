"""Seconds per audio-minute of each dataset stage on the demo corpus (CPU).

Runs the whole dataset DAG from scratch in a scratch copy of the workflow, with random
weights (same compute as pretrained), then reads Snakemake's per-job benchmark files.

    .venv/bin/python bench/dataset_cpu.py [--songs 8] [--seconds 60] [--cores 2]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--songs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--cores", default="all")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soloist-bench-"))
    sheet = work / "tracks.tsv"
    sheet.write_text("track\tsource\n" + "".join(
        f"demo{i:02d}\tdemo:demo{i:02d}\n" for i in range(1, args.songs + 1)))
    overlay = work / "bench.yaml"
    # the songs' mixtures go through Demucs, as recordings do (random weights would skip it)
    overlay.write_text(json.dumps({"tracks": str(sheet), "weights": "random",
                                   "demo": {"seconds": args.seconds, "stems": False}}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores",
           args.cores, "-q", "--configfile", str(overlay)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=work, check=True)
    wall = time.perf_counter() - start

    minutes = args.songs * args.seconds / 60
    seconds, jobs = job_seconds(work)
    stats = json.loads((work / "results/shards/stats.json").read_text())

    print(f"demo corpus: {args.songs} songs x {args.seconds:g} s = {minutes:g} audio-minutes, "
          f"cores={args.cores}, weights=random")
    print(f"{'stage':<14}{'jobs':>6}{'seconds':>10}{'s / audio-min':>15}")
    for stage in ("demo_corpus", "fetch_weights", "ingest", "separate", "clip", "tokenize",
                  "shard"):
        if stage in seconds:
            print(f"{stage:<14}{jobs[stage]:>6}{seconds[stage]:>10.1f}"
                  f"{seconds[stage] / minutes:>15.2f}")
    print(f"{'whole DAG':<14}{'':>6}{wall:>10.1f}{wall / minutes:>15.2f}  (wall clock)")
    print(f"samples: {stats['samples_in_manifest']}, tracks ok/failed: "
          f"{stats['tracks_ok']}/{stats['tracks_failed']}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
