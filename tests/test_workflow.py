"""The whole dataset DAG, run for real: 2 demo songs, a loopback playlist, stems, bad inputs."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import webdataset as wds
from conftest import planned_jobs, snakemake, workflow_copy
from loopback import free_port_url, make_tone, serve_dir, write_rss

from soloist.demo_corpus import make_song

CONFIG = {"tracks": "tracks.tsv", "weights": "random", "demo": {"seconds": 15},
          "ingest": {"ytdlp": {"retries": 0, "socket_timeout": 5}}}
GOOD = ["feed.001", "feed.002", "song1", "song2", "stems"]
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


def sheet(media, base_url: str, dead_url: str, extra: str = "") -> str:
    return ("track\tsource\tsplit\n"
            "song1\tdemo:song1\t\n"
            "song2\tdemo:song2\tvalid\n"
            f"feed\t{base_url}/feed.xml\t\n"
            f"stems\t{media}/stems\ttest\n"
            f"dead\t{dead_url}\t\n"
            f"missing\t{base_url}/gone.mp3\t\n"
            f"corrupt\t{media}/corrupt.mp3\t\n"
            f"silent\t{media}/silent.wav\t\n"
            f"lowrate\t{media}/lowrate.wav\t\n"
            f"short\t{media}/short.wav\t\n"
            f"nofile\t{media}/nofile.wav\t\n" + extra)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    for name in ("ep1", "ep2"):
        make_tone(media / f"{name}.mp3", 11, freq=330 if name == "ep1" else 440)
    make_song("stems", media, seconds=20)  # writes media/stems/*.flac: a multitrack
    (media / "corrupt.mp3").write_bytes(b"ID3" + os.urandom(4000))
    sf.write(media / "silent.wav", np.zeros((44100 * 12, 2)), 44100)
    make_tone(media / "lowrate.wav", 12, sample_rate=8000)
    make_tone(media / "short.wav", 4)
    with serve_dir(media) as base_url:
        write_rss(media / "feed.xml", base_url, ["ep1.mp3", "ep2.mp3"])
        yield media, base_url, free_port_url()


def run_dag(workdir, media):
    workflow_copy(workdir)
    (workdir / "tracks.tsv").write_text(sheet(*media))
    snakemake(workdir, config=CONFIG)
    return workdir


@pytest.fixture(scope="module")
def done(tmp_path_factory, media):
    """A finished run of the whole DAG."""
    return run_dag(tmp_path_factory.mktemp("run1"), media)


def test_failures_table_has_one_readable_row_per_bad_track(done):
    with open(done / "results/failures.tsv") as f:
        rows = {r["track"]: r for r in csv.DictReader(f, delimiter="\t")}
    assert set(rows) == set(BAD)
    for track, (stage, words) in BAD.items():
        assert rows[track]["stage"] == stage and words in rows[track]["reason"], rows[track]


def test_counts_reconcile(done):
    stats = json.loads((done / "results/shards/stats.json").read_text())
    tracks_in = len(GOOD) + len(BAD)  # the playlist row expanded into two tracks
    assert (stats["tracks_in"], stats["tracks_ok"], stats["tracks_failed"]) == \
        (tracks_in, len(GOOD), len(BAD))
    windows = sum(pq.read_metadata(done / f"results/clip/{t}/windows.parquet").num_rows
                  for t in GOOD)
    manifest = pq.read_table(done / "results/shards/manifest.parquet").to_pylist()
    assert windows == len(manifest) == stats["samples_in_manifest"] > 0
    assert stats["weights"] == "random" and "NOT musically meaningful" in stats["warning"]
    assert {r["track"] for r in manifest} <= set(GOOD)
    splits = {r["track"]: r["split"] for r in manifest}
    assert splits["song2"] == "valid" and splits["stems"] == "test"  # the sheet's splits


def test_shards_stream_back_with_webdataset(done):
    manifest = pq.read_table(done / "results/shards/manifest.parquet").to_pylist()
    urls = sorted({str(done / "results/shards" / r["shard"]) for r in manifest})
    keys = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        context = np.load(io.BytesIO(sample["context.npy"]), allow_pickle=False)
        target = np.load(io.BytesIO(sample["target.npy"]), allow_pickle=False)
        assert context.shape == target.shape == (4, 750) and context.dtype == np.int16
        assert meta["weights"] == "random" and meta["frame_rate"] == 75.0
        keys.append(sample["__key__"])
    assert sorted(keys) == sorted(r["key"] for r in manifest)


def test_playlist_and_stems_tracks(done):
    resolved = (done / "results/resolve/feed.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in resolved[1:]] == ["feed.001", "feed.002"]
    separated = json.loads((done / "results/separate/stems/separate.json").read_text())
    assert separated["weights"] == "given stems"  # no Demucs for a multitrack
    assert separated["stems"] == ["bass", "drums", "other", "piano"]


def test_nothing_left_to_do_after_a_run(done):
    assert planned_jobs(done, config=CONFIG) == {}


def test_clip_change_reruns_only_clip_and_shard(done):
    jobs = planned_jobs(done, config=CONFIG | {"clip": {"min_active": 0.7}})
    assert jobs == {"clip": len(GOOD) + len(BAD), "shard": 1, "all": 1}


def test_shard_size_change_reruns_only_shard(done):
    assert planned_jobs(done, config=CONFIG | {"shard": {"max_samples": 2}}) == \
        {"shard": 1, "all": 1}


def test_new_track_schedules_only_its_jobs_and_shard(done, media):
    (done / "more.tsv").write_text(sheet(*media, extra="song3\tdemo:song3\t\n"))
    jobs = planned_jobs(done, config=CONFIG | {"tracks": "more.tsv"})
    assert jobs == {"demo_corpus": 1, "ingest": 1, "separate": 1, "clip": 1, "tokenize": 1,
                    "shard": 1, "all": 1}


def test_two_runs_from_scratch_are_byte_identical(done, media, tmp_path):
    again = run_dag(tmp_path / "run2", media)
    files = ["results/shards/manifest.parquet", "results/failures.tsv"]
    files += sorted(str(p.relative_to(done)) for p in done.glob("results/shards/*/*.tar"))
    assert len(files) > 2
    for name in files:
        assert (done / name).read_bytes() == (again / name).read_bytes(), name


def test_generated_unit_tests_pass(done):
    """Snakemake's --generate-unit-tests works: outputs are reproducible rule by rule."""
    snakemake(done, "--generate-unit-tests", config=CONFIG)
    env = os.environ | {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    tests = [f".tests/unit/test_{rule}.py" for rule in ("clip", "shard")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *tests], cwd=done, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout


def test_dry_run_lists_the_dag_and_lint_is_clean(done):
    dry = snakemake(done, "-n", "--forceall", config=CONFIG)
    for rule in ("demo_corpus", "fetch_weights", "resolve", "ingest", "separate", "clip",
                 "tokenize", "shard"):
        assert rule in dry.stdout
    lint = snakemake(done, "--lint", config=CONFIG)
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr


def test_dag_renders_as_svg(done):
    dag = snakemake(done, "--dag", "--forceall", config=CONFIG).stdout
    svg = subprocess.run(["dot", "-Tsvg"], input=dag[dag.index("digraph"):],
                         capture_output=True, text=True, check=True).stdout
    assert svg.startswith("<?xml") and "tokenize" in svg and "separate" in svg


@pytest.mark.parametrize("config, message", [
    ({"clip": {"seconds": -1}}, "clip.seconds: -1 is less than or equal to the minimum of 0"),
    ({"tracks": "bad.tsv"}, "bad.tsv line 3 (track 'has space')"),
])
def test_invalid_config_or_sheet_is_named(done, config, message):
    (done / "bad.tsv").write_text("track\tsource\nok\tdemo:ok\nhas space\tdemo:x\n")
    proc = snakemake(done, "-n", config=CONFIG | config, check=False)
    assert proc.returncode != 0 and message in proc.stderr
