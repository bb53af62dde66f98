"""Shared fixtures: random-init weights fetched once, and a way to run the real workflow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from soloist.fetch_weights import fetch_weights

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """``resources/weights`` holding random-init Demucs and EnCodec, built once per session."""
    root = tmp_path_factory.mktemp("weights") / "resources" / "weights"
    fetch_weights("demucs", "htdemucs_6s", "random", root / "random/demucs/htdemucs_6s.json")
    fetch_weights("encodec", "encodec_24khz", "random",
                  root / "random/encodec/encodec_24khz.json")
    return root


WORKFLOW = ("Snakefile", "rules", "workflow", "config", "profiles", "envs")


def workflow_copy(dest: Path) -> Path:
    """A copy of the workflow in ``dest``, run from there like from a checkout's root."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def with_weights(workdir: Path, weights: Path) -> None:
    """Copy pre-built random weights into ``workdir`` as if fetch_weights had run there."""
    shutil.copytree(weights, workdir / "resources" / "weights", dirs_exist_ok=True)


def snakemake(workdir: Path, *args: str, config: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run the workflow copied into ``workdir``; ``config`` is written as an overlay configfile."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    if config is not None:  # last: --configfile takes every argument up to the next option
        overlay = workdir / "overlay.yaml"
        overlay.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(overlay)]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_jobs(workdir: Path, *args: str, config: dict | None = None) -> dict[str, int]:
    """Rule -> job count of what a dry run would execute (empty when nothing to do)."""
    proc = snakemake(workdir, "-n", *args, config=config)
    text = proc.stdout + proc.stderr
    if "Job stats:" not in text:
        assert "Nothing to be done" in text, text
        return {}
    table = text.split("Job stats:", 1)[1].splitlines()
    jobs = {}
    for line in table[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs
