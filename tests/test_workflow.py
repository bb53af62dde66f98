"""The whole dataset DAG, run for real: 2 demo songs, a loopback playlist, stems, bad inputs."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import (
    BAD,
    GOOD,
    batch_dir,
    e2e_sheet,
    planned_jobs,
    run_e2e,
    snakemake,
    workflow_copy,
)

from soloist.config import batch_of


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
    windows = sum(pq.read_metadata(batch_dir(done, "clip", t) / t / "windows.parquet").num_rows
                  for t in GOOD)
    manifest = pq.read_table(done / "results/shards/manifest.parquet").to_pylist()
    assert windows == len(manifest) == stats["samples_in_manifest"] > 0
    assert stats["weights"] == "random" and "NOT musically meaningful" in stats["warning"]
    assert {r["track"] for r in manifest} <= set(GOOD)
    splits = {r["track"]: r["split"] for r in manifest}
    assert splits["mt3"] == "test" and splits["feed.001"] == "valid"  # the sheet's splits


def test_shards_stream_back_with_webdataset(done):
    manifest = pq.read_table(done / "results/shards/manifest.parquet").to_pylist()
    urls = sorted({str(done / "results/shards" / r["shard"]) for r in manifest})
    keys = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        context = np.load(io.BytesIO(sample["context.npy"]), allow_pickle=False)
        target = np.load(io.BytesIO(sample["target.npy"]), allow_pickle=False)
        assert context.shape == target.shape == (4, 750) and context.dtype == np.int16
        # random Demucs separated the feed's recordings; the rest entered as their stems
        separated = meta["original_track"].startswith("feed.")
        assert meta["weights"] == ("random" if separated else "shipped"), meta
        assert meta["frame_rate"] == 75.0
        keys.append(sample["__key__"])
    assert sorted(keys) == sorted(r["key"] for r in manifest)


def test_playlist_and_stems_tracks(done):
    resolved = (done / "results/resolve/feed.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in resolved[1:]] == ["feed.001", "feed.002"]
    separated = json.loads((batch_dir(done, "separate", "stems") / "stems/separate.json")
                           .read_text())
    assert separated["weights"] == "given stems"  # no Demucs for a multitrack
    assert separated["stems"] == ["bass", "drums", "other", "piano"]


def test_nothing_left_to_do_after_a_run(done):
    assert planned_jobs(done) == {}


def batches(tracks) -> int:
    return len({batch_of(t, 8) for t in tracks})


def test_clip_change_reruns_only_clip_and_shard(done):
    jobs = planned_jobs(done, config={"clip": {"min_active": 0.7}})
    assert jobs == {"clip": batches([*GOOD, *BAD]), "shard": 1, "train": 1, "evaluate": 1,
                    "all": 1}


def test_shard_size_change_reruns_only_shard_and_downstream(done):
    assert planned_jobs(done, config={"shard": {"max_samples": 2}}) == \
        {"shard": 1, "train": 1, "evaluate": 1, "all": 1}


def test_new_track_schedules_only_its_batch_and_shard(done, media):
    (done / "config/more.tsv").write_text(e2e_sheet(*media, extra="song3\tdemo:song3\t\n"))
    jobs = planned_jobs(done, config={"tracks": "config/more.tsv"})
    assert jobs == {"sheet": 1, "demo_corpus": 1, "ingest": 1, "separate": 1, "clip": 1,
                    "tokenize": 1, "shard": 1, "train": 1, "evaluate": 1, "all": 1}


def test_a_removed_url_row_reruns_only_its_batch_and_shard(done, media):
    """Its batch's jobs rerun (their tracks changed) and find nothing to do; the other
    batches do not depend on it."""
    sheet = e2e_sheet(*media).splitlines(keepends=True)
    (done / "config/fewer.tsv").write_text("".join(line for line in sheet
                                                   if not line.startswith("dead\t")))
    jobs = planned_jobs(done, config={"tracks": "config/fewer.tsv"})
    others = [t for t in [*GOOD, *BAD] if t != "dead"]
    shared = batch_of("dead", 8) in {batch_of(t, 8) for t in others}
    batch_jobs = dict.fromkeys(("ingest", "separate", "clip", "tokenize"), 1) if shared else {}
    assert jobs == {"sheet": 1, **batch_jobs, "shard": 1, "train": 1, "evaluate": 1, "all": 1}


def test_a_batch_job_loads_its_model_once(done):
    """feed.001 and feed.002 share a batch: one Demucs and one codec load for both. Their
    stems come from a random-init Demucs, so their tokens say random, whatever the codec."""
    b = batch_of("feed.001", 8)
    assert b == batch_of("feed.002", 8)
    for t in ("feed.001", "feed.002"):
        status = json.loads((done / f"results/tokenize/{b}/{t}/tokens.json").read_text())
        assert status["ok"] and status["weights"] == "random" and status["model"] == "own_demo"
    log = (done / f"results/logs/separate/{b}.log").read_text()
    assert log.count("RANDOM-INIT WEIGHTS") == 1, log
    log = (done / f"results/logs/tokenize/{b}.log").read_text()
    loads = re.findall(r"tokenized (\d+) tracks in .*model load", log)
    assert len(loads) == 1 and int(loads[0]) >= 2, log


def test_a_thousand_tracks_make_a_handful_of_jobs(fresh):
    (fresh / "audio").mkdir()
    lines = ["track\tsource"]
    for i in range(1000):
        (fresh / f"audio/{i}.wav").touch()
        lines.append(f"t{i}\t{fresh}/audio/{i}.wav")
    (fresh / "big.tsv").write_text("\n".join(lines) + "\n")
    jobs = planned_jobs(fresh, "shard", config={"tracks": "big.tsv", "weights": "random",
                                                "batches": 4})
    # Demucs only: with random weights the tokens come from the shipped codec
    assert jobs == {"sheet": 1, "fetch_weights": 1, "ingest": 4, "separate": 4, "clip": 4,
                    "tokenize": 4, "shard": 1}


def test_two_runs_from_scratch_are_byte_identical(done, media, tmp_path):
    again = run_e2e(tmp_path / "run2", media, "shard")  # the dataset part
    files = ["results/shards/manifest.parquet", "results/failures.tsv"]
    files += sorted(str(p.relative_to(done)) for p in done.glob("results/shards/*/*.tar"))
    assert len(files) > 2
    for name in files:
        assert (done / name).read_bytes() == (again / name).read_bytes(), name


def test_generated_unit_tests_pass(done):
    """Snakemake's --generate-unit-tests works for the rules whose files are all declared:
    outputs are reproducible rule by rule. (The per-track stages' tracks are not declared,
    so that reruns keep them: tests/test_rules.py stages them instead.)"""
    snakemake(done, "--generate-unit-tests")
    env = os.environ | {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    tests = [f".tests/unit/test_{rule}.py" for rule in ("sheet", "demo_corpus")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *tests], cwd=done, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout


@pytest.fixture
def fresh(tmp_path):
    """A workflow copy with the default config and demo sheet, nothing run yet."""
    return workflow_copy(tmp_path)


def test_dry_run_lists_the_dag_and_lint_is_clean(fresh):
    jobs = planned_jobs(fresh)
    n = batches(f"demo0{i}" for i in range(1, 9))  # the default sheet
    assert jobs == {"sheet": 1, "demo_corpus": 8, "ingest": n,
                    "separate": n, "clip": n, "tokenize": n, "shard": 1, "train": 1,
                    "evaluate": 1, "all": 1}
    lint = snakemake(fresh, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr


def test_dag_renders_as_svg(fresh):
    dag = snakemake(fresh, "--dag").stdout
    svg = subprocess.run(["dot", "-Tsvg"], input=dag[dag.index("digraph"):],
                         capture_output=True, text=True, check=True).stdout
    assert svg.startswith("<?xml") and "tokenize" in svg and "evaluate" in svg


@pytest.mark.parametrize("config, message", [
    ({"clip": {"seconds": -1}}, "clip.seconds: -1 is less than or equal to the minimum of 0"),
    ({"tracks": "bad.tsv"}, "bad.tsv line 3 (track 'has space')"),
])
def test_invalid_config_or_sheet_is_named(done, config, message):
    (done / "bad.tsv").write_text("track\tsource\nok\tdemo:ok\nhas space\tdemo:x\n")
    proc = snakemake(done, "-n", config=config, check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr


def test_offline_demo_sheet_runs_on_its_true_stems_and_the_shipped_codec(fresh):
    """weights: auto, demo.stems: auto and tokenize.model: auto, the defaults, with no model
    hub reachable: nothing to fetch, since the songs enter as their stems and the tokens
    come from the codec shipped in the package (a random one's would mean nothing)."""
    proc = snakemake(fresh, "-n", "shard")
    assert "every track is a demo song: RANDOM-INIT weights" in proc.stderr
    jobs = planned_jobs(fresh, "shard")
    assert "fetch_weights" not in jobs and jobs["tokenize"] > 0
    assert "with own_demo" in proc.stdout  # the tokenize jobs' message


def test_a_failed_job_ends_the_output_with_its_reason(fresh, media):
    """A real recording offline: weights auto means pretrained, which cannot be downloaded;
    the last lines Snakemake prints name the job and say how to get the weights."""
    (fresh / "real.tsv").write_text(f"track\tsource\ngig\t{media[0]}/ep1.mp3\n")
    proc = snakemake(fresh, "shard", config={"tracks": "real.tsv"}, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    tail = output[output.rindex("Error in rule"):]  # after Snakemake's own last word on it
    tail = tail[tail.index("soloist: 2 job(s) failed:"):]
    assert "- fetch_weights [resources/weights/pretrained/demucs/htdemucs_6s.json]:" in tail
    assert "- fetch_weights [resources/weights/pretrained/codec/encodec_24khz.json]:" in tail
    assert "cannot download pretrained weights" in tail and "weights=random" in tail, tail
    assert "whole log: results/logs/fetch_weights/pretrained-" in tail, tail


def test_demo_songs_enter_as_their_true_stems_and_clip_finds_their_solo(done):
    """Random weights: the demo songs skip separation, and the clip stage's soloing time is
    scored against the synthesizer's solo intervals."""
    for song in ("song1", "song2"):
        status = json.loads((batch_dir(done, "separate", song) / song / "separate.json")
                            .read_text())
        assert status["weights"] == "given stems", status
        log = (done / f"results/logs/ingest/{batch_of(song, 8)}.log").read_text()
        assert f"{song} enters as the demo's ground-truth stems" in log
    scores = json.loads((done / "results/shards/stats.json").read_text())["clip_vs_truth"]
    assert scores["tracks"] == 2 and {t["track"] for t in scores["per_track"]} == \
        {"song1", "song2"}
    assert scores["f1"] >= 0.95 and scores["precision"] > 0.9 and scores["recall"] > 0.9, scores
