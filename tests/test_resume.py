"""Killed runs and a sheet that changes: each batch job redoes only the tracks it must.

One batch of five tracks (four mixtures that random Demucs separates, one stems folder), run
for real; runs killed mid-batch are compared byte for byte with one that was not.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import planned_jobs, set_config, snakemake, workflow_copy
from loopback import make_tone, serve_dir, write_rss

from soloist.synth import make_song

# tokenize.batch_size 2: one track's chunks at a time, so that tracks finish one by one
CONFIG = {"tracks": "tracks.tsv", "weights": "random", "batches": 1,
          "ingest": {"ytdlp": {"retries": 0, "socket_timeout": 5}},
          "tokenize": {"batch_size": 2}}
SONGS = ["s1", "s2", "s3", "s4"]
TRACKS = [*SONGS, "stems"]


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("songs")
    for i, name in enumerate([*SONGS, "stems", "late"]):
        make_song(name, folder / name, seconds=15, seed=i)
    return folder


def sheet(songs: Path, extra: str = "") -> str:
    return ("track\tsource\n" + "".join(f"{s}\t{songs}/{s}/mixture.flac\n" for s in SONGS)
            + f"stems\t{songs}/stems/stems\n" + extra)


def workdir(path: Path, songs: Path) -> Path:
    workflow_copy(path)
    (path / "tracks.tsv").write_text(sheet(songs))
    set_config(path, CONFIG)
    return path


@pytest.fixture(scope="module")
def clean(tmp_path_factory, songs) -> Path:
    """The dataset of an uninterrupted run."""
    path = workdir(tmp_path_factory.mktemp("clean"), songs)
    snakemake(path, "shard")
    return path


def dataset(path: Path) -> dict[str, bytes]:
    """What a run made: shards, manifest, failures and every track's tokens and windows."""
    names = ["results/shards/manifest.parquet", "results/failures.tsv",
             *(f"results/tokenize/b0/{t}/{role}.npy" for t in TRACKS
               for role in ("context", "target")),
             *(f"results/clip/b0/{t}/windows.parquet" for t in TRACKS),
             *(str(p.relative_to(path)) for p in path.glob("results/shards/*/*.tar"))]
    return {name: (path / name).read_bytes() for name in names}


def kill_when(path: Path, pattern: str, sig: int) -> set[str]:
    """Start ``snakemake shard``; when a file matching ``pattern`` appears, send ``sig`` to
    Snakemake and its jobs at once (SIGKILL: what a node failure or the OOM killer does;
    SIGINT: Ctrl-C). Returns the tracks whose status existed once all had stopped."""
    stage = pattern.split("/")[1]
    # A suite started in the background (as CI starts it) has Ctrl-C ignored, and an ignored
    # signal stays ignored in every process it starts; a terminal's Ctrl-C reaches its run
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(path / "killed.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "shard"],
                                cwd=path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 600
    while not list(path.glob(pattern)):
        assert proc.poll() is None, (path / "killed.log").read_text()
        assert time.monotonic() < deadline, f"{pattern} never appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    status = {"separate": "separate.json", "tokenize": "tokens.json"}[stage]
    done = {t for t in TRACKS if (path / f"results/{stage}/b0/{t}/{status}").is_file()}
    assert len(done) < len(TRACKS), "the batch finished before the kill"
    return done


def last_work(path: Path, stage: str) -> tuple[str, set[str]]:
    """The last run's summary line of ``stage``'s batch and the tracks it did."""
    log = (path / f"results/logs/{stage}/b0.log").read_text()
    summary = re.findall(rf"{stage} b0: (\d+ of \d+ tracks to do, \d+ unchanged kept)", log)
    todo = re.findall(r"to do: (.*)", log)
    return summary[-1], set(todo[-1].split()) if todo else set()


@pytest.mark.parametrize("pattern, sig", [
    ("results/separate/b0/*/target.flac", signal.SIGKILL),  # mid-write of the first track
    ("results/separate/b0/*/separate.json", signal.SIGINT),
    ("results/tokenize/b0/*/tokens.json", signal.SIGKILL),
], ids=["separate-kill-9", "separate-ctrl-c", "tokenize-kill-9"])
def test_a_killed_batch_resumes_to_the_same_bytes(tmp_path, songs, clean, pattern, sig):
    path = workdir(tmp_path, songs)
    finished = kill_when(path, pattern, sig)
    stage = pattern.split("/")[1]
    if sig == signal.SIGKILL:  # Snakemake had no time to release its lock
        snakemake(path, "--unlock")
    snakemake(path, "shard")  # the same command again
    todo = set(TRACKS) - finished
    assert last_work(path, stage) == (
        f"{len(todo)} of {len(TRACKS)} tracks to do, {len(finished)} unchanged kept", todo)
    again, reference = dataset(path), dataset(clean)
    assert again.keys() == reference.keys()
    assert [name for name in reference if again[name] != reference[name]] == []


@pytest.fixture
def finished(tmp_path, clean) -> Path:
    """A copy of the clean run (times kept, so nothing looks changed)."""
    path = tmp_path / "run"
    shutil.copytree(clean, path, symlinks=True)
    return path


def test_a_new_local_track_is_the_only_work(finished, songs):
    (finished / "tracks.tsv").write_text(sheet(songs, f"late\t{songs}/late/mixture.flac\n"))
    assert planned_jobs(finished, "shard") == {"sheet": 1, "ingest": 1, "separate": 1,
                                               "clip": 1, "tokenize": 1, "shard": 1}
    snakemake(finished, "shard")
    for stage in ("ingest", "separate", "clip", "tokenize"):
        assert last_work(finished, stage) == ("1 of 6 tracks to do, 5 unchanged kept", {"late"})
    assert '"tracks_in": 6' in (finished / "results/shards/stats.json").read_text()


def test_rows_added_and_removed_between_runs(finished, songs, clean, tmp_path):
    make_tone(tmp_path / "served/ep.mp3", 12, freq=330)
    with serve_dir(tmp_path / "served") as base_url:
        write_rss(tmp_path / "served/feed.xml", base_url, ["ep.mp3", "ep.mp3"])
        grown = sheet(songs, f"feed\t{base_url}/feed.xml\n")
        (finished / "tracks.tsv").write_text(grown)
        # a dry run cannot see past the checkpoint: ingest and the rest follow once it ran
        assert planned_jobs(finished, "shard") == {"sheet": 1, "resolve": 1, "shard": 1}
        snakemake(finished, "shard")
    assert (finished / "results/resolve/feed.tsv").is_file()
    for stage in ("ingest", "separate", "clip", "tokenize"):
        assert last_work(finished, stage) == ("2 of 7 tracks to do, 5 unchanged kept",
                                              {"feed.001", "feed.002"})
    assert '"tracks_in": 7' in (finished / "results/shards/stats.json").read_text()

    # back to the first sheet: the batch jobs rerun (their tracks changed) but do nothing
    (finished / "tracks.tsv").write_text(sheet(songs))
    assert planned_jobs(finished, "shard") == {"sheet": 1, "ingest": 1, "separate": 1,
                                               "clip": 1, "tokenize": 1, "shard": 1}
    snakemake(finished, "shard")
    for stage in ("ingest", "separate", "clip", "tokenize"):
        assert last_work(finished, stage) == ("0 of 5 tracks to do, 5 unchanged kept", set())
    assert dataset(finished) == dataset(clean)
