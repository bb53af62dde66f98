"""Shared fixtures: random-init weights fetched once, and a way to run the real workflow."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from soloist.config import batch_of
from soloist.fetch_weights import fetch_weights
from soloist.io import write_json

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """``resources/weights`` holding random-init Demucs and the default codec, built once per
    session."""
    root = tmp_path_factory.mktemp("weights") / "resources" / "weights"
    fetch_weights("demucs", "htdemucs_6s", "random", root / "random/demucs/htdemucs_6s.json")
    fetch_weights("codec", "encodec_24khz", "random",
                  root / "random/codec/encodec_24khz.json")
    return root


@pytest.fixture(scope="session")
def codec_manifests(tmp_path_factory, random_weights) -> dict[str, Path]:
    """Codec name -> the manifest of its random-init weights, every codec (the default one
    is random_weights'; the others are built once per session, in a tree of their own)."""
    from soloist.weights import CODECS

    root = tmp_path_factory.mktemp("codecs") / "resources" / "weights"
    manifests = {"encodec_24khz": random_weights / "random/codec/encodec_24khz.json"}
    for name in CODECS.keys() - manifests.keys():
        manifests[name] = root / f"random/codec/{name}.json"
        fetch_weights("codec", name, "random", manifests[name])
    return manifests


WORKFLOW = ("Snakefile", "rules", "workflow", "config", "profiles", "envs", "report")


def interrupt_at_first_checkpoint(proc: subprocess.Popen, out: Path) -> str:
    """SIGTERM to a trainer writing into ``out`` once its first checkpoint is there (what a
    SLURM time limit does); its output."""
    last = out / "checkpoints/last.pt"
    while not last.exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate()[0]


def run_train(shards, out, cfg, *launcher, **popen) -> subprocess.Popen:
    """``python -m soloist.train`` on ``shards`` into ``out`` with config ``cfg``, its
    output piped (``launcher``: torchrun's command instead of python)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "run-config.json", cfg)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*(launcher or [sys.executable]), "-m", "soloist.train", str(shards),
                             str(out), str(out / "run-config.json")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def history(out) -> list[float]:
    """The training losses in ``out``'s last checkpoint, a step each."""
    state = torch.load(out / "checkpoints/last.pt", weights_only=True)["state"]
    return [h["loss"] for h in state["history"]]


def twelve_steps(overlay: dict, folder: Path) -> dict:
    """A DAG test's config ``overlay`` for a 12-step run of ``resumed_after_sigterm`` on its
    shards, on the CPU, with an MLflow store in ``folder``."""
    from soloist.config import validate_config

    return validate_config(overlay | {
        "train": overlay["train"] | {"steps": 12, "eval_every": 6, "device": "cpu"},
        "mlflow": {"tracking_uri": f"sqlite:///{folder}/mlflow.db"}})


def resumed_after_sigterm(shards, folder: Path, cfg: dict) -> tuple[int, str]:
    """Train on ``shards`` into ``folder/straight`` without a break and into ``folder/cut``
    with a SIGTERM at its first checkpoint, then again from that; checks that the resumed
    run's losses are the unbroken one's. Returns (the step it stopped at, the output of the
    interrupted run)."""
    from soloist.train import EXIT_REQUEUE

    straight = run_train(shards, folder / "straight", cfg)
    assert straight.wait() == 0, straight.stdout.read()
    cut = run_train(shards, folder / "cut", cfg)
    output = interrupt_at_first_checkpoint(cut, folder / "cut")
    assert cut.returncode == EXIT_REQUEUE, output
    stopped_at = len(history(folder / "cut"))
    resumed = run_train(shards, folder / "cut", cfg)
    again = resumed.communicate()[0]
    assert resumed.returncode == 0 and f"resuming from step {stopped_at}" in again, again
    np.testing.assert_allclose(history(folder / "cut"), history(folder / "straight"), rtol=1e-5)
    return stopped_at, output


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


def set_config(workdir: Path, changes: dict) -> None:
    """Edit the copy's config/config.yaml, as a user would (nested keys merge)."""
    def merge(base: dict, new: dict) -> dict:
        return base | {k: merge(base.get(k, {}), v) if isinstance(v, dict) else v
                       for k, v in new.items()}

    path = workdir / "config" / "config.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), changes)))


def batch_dir(workdir: Path, stage: str, track: str, batches: int = 8) -> Path:
    """results/<stage>/<batch>: the folder of the batch job that handles ``track``."""
    return workdir / "results" / stage / batch_of(track, batches)


def with_weights(workdir: Path, weights: Path) -> None:
    """Copy pre-built random weights into ``workdir`` as if fetch_weights had run there."""
    shutil.copytree(weights, workdir / "resources" / "weights", dirs_exist_ok=True)


def snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True,
              overlay: str = "overlay.yaml") -> subprocess.CompletedProcess:
    """Run the workflow copied into ``workdir``; ``config`` is written as an overlay configfile
    (named ``overlay``: runs at the same time need their own)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    if config is not None:  # last: --configfile takes every argument up to the next option
        overlay = workdir / overlay
        overlay.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(overlay)]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_jobs(workdir: Path, *args: str, config: dict | None = None,
                 overlay: str = "overlay.yaml") -> dict[str, int]:
    """Rule -> job count of what a dry run would execute (empty when nothing to do)."""
    proc = snakemake(workdir, "-n", *args, config=config, overlay=overlay)
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


# The end-to-end run every workflow test shares: 2 demo songs, a loopback playlist, a
# multitrack, and one of each kind of bad input; random weights, a short training.
E2E = {"tracks": "config/e2e.tsv", "weights": "random", "demo": {"seconds": 20},
       "ingest": {"ytdlp": {"retries": 0, "socket_timeout": 5}},
       "train": {"steps": 300, "batch_size": 8, "seconds": 5, "workers": 1, "eval_every": 100,
                 "eval_batches": 4, "checkpoint_every": 100, "epoch_batches": 100,
                 "warmup_steps": 20, "lr": 0.001},
       "evaluate": {"examples": 2, "batches": 4, "seconds": 5}}
# Multitracks (the demo's true stems, so the solo really follows the backing): the model
# trains on some and is tested on others.
MULTITRACKS = {"stems": "train", "mt1": "train", "mt2": "train", "mt3": "test", "mt4": "test"}
GOOD = ["feed.001", "feed.002", "song1", "song2", *MULTITRACKS]
# track -> (stage, words of the reason)
BAD = {
    "dead": ("ingest", "connection refused"),
    "missing": ("ingest", "HTTP Error 404"),
    "corrupt": ("ingest", "cannot decode corrupt.mp3"),
    "silent": ("ingest", "silent"),
    "lowrate": ("ingest", "sample rate 8000 Hz below ingest.min_sample_rate=16000"),
    "short": ("clip", "shorter than one window (clip.seconds=10)"),
    "nofile": ("ingest", "file not found"),
}


def e2e_sheet(media: Path, base_url: str, dead_url: str, extra: str = "") -> str:
    return ("track\tsource\tsplit\tstyle\n"  # style: a tag column (condition.columns)
            "song1\tdemo:song1\ttrain\tswing\n"
            "song2\tdemo:song2\tvalid\n"
            f"feed\t{base_url}/feed.xml\tvalid\n"
            + "".join(f"{t}\t{media}/{t}/stems\t{split}\n" for t, split in MULTITRACKS.items()) +
            f"dead\t{dead_url}\t\n"
            f"missing\t{base_url}/gone.mp3\t\n"
            f"corrupt\t{media}/corrupt.mp3\t\n"
            f"silent\t{media}/silent.wav\t\n"
            f"lowrate\t{media}/lowrate.wav\t\n"
            f"short\t{media}/short.wav\t\n"
            f"nofile\t{media}/nofile.wav\t\n" + extra)


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """Input files, served on loopback: (folder, base URL, a dead URL)."""
    from loopback import free_port_url, make_tone, serve_dir, write_rss

    from soloist.synth import make_song

    media = tmp_path_factory.mktemp("media")
    for name, freq in (("ep1", 330), ("ep2", 440)):
        make_tone(media / f"{name}.mp3", 11, freq=freq)
    for name in MULTITRACKS:
        make_song(name, media / name, seconds=40)  # writes <name>/stems/*.flac
    (media / "corrupt.mp3").write_bytes(b"ID3" + os.urandom(4000))
    sf.write(media / "silent.wav", np.zeros((44100 * 12, 2)), 44100)
    make_tone(media / "lowrate.wav", 12, sample_rate=8000)
    make_tone(media / "short.wav", 4)
    with serve_dir(media) as base_url:
        write_rss(media / "feed.xml", base_url, ["ep1.mp3", "ep2.mp3"])
        yield media, base_url, free_port_url()


def run_e2e(workdir: Path, media, *targets: str) -> Path:
    workflow_copy(workdir)
    (workdir / "config/e2e.tsv").write_text(e2e_sheet(*media))
    set_config(workdir, E2E)
    snakemake(workdir, *targets)
    return workdir


@pytest.fixture(scope="session")
def done(tmp_path_factory, media) -> Path:
    """A finished run of the whole DAG, training and evaluation included."""
    return run_e2e(tmp_path_factory.mktemp("run1"), media)
