"""What a finished Snakemake run's benchmark files say, for the bench scripts."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path


def job_seconds(workdir: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds and job count per rule, from ``results/benchmarks/<rule>/*.tsv``."""
    seconds: dict[str, float] = defaultdict(float)
    jobs: dict[str, int] = defaultdict(int)
    for tsv in sorted((workdir / "results/benchmarks").glob("*/*.tsv")):
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        seconds[tsv.parent.name] += float(row["s"])
        jobs[tsv.parent.name] += 1
    return seconds, jobs
