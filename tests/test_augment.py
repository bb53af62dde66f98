"""augment: pitch and tempo variants, shifted alike in context and target, never across splits."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import planned_jobs, snakemake, with_weights, workflow_copy
from measure import click_track, clicks, pitch

from soloist.augment import augment_batch, shift
from soloist.config import batch_of
from soloist.io import read_audio, read_json, write_audio, write_json
from soloist.tracks import Batch

SR = 44100


@pytest.mark.parametrize("semitones", [-2, -1, 0.5, 2, 7])
def test_shifted_tone_is_in_tune_within_a_cent_and_as_loud(semitones):
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * torch.arange(5 * SR) / SR)
    shifted = shift(tone[None], semitones, 0.9)[0]
    cents = 1200 * np.log2(pitch(shifted.numpy(), SR) / (440 * 2 ** (semitones / 12)))
    # a plain phase vocoder lets the bins of a partial drift apart: 10 dB quieter
    level = 20 * np.log10(float(shifted[SR:-SR].pow(2).mean() / tone.pow(2).mean()) ** 0.5)
    print(f"{semitones:+g} semitones: {cents:+.3f} cents, {level:+.2f} dB")
    assert abs(cents) < 1 and abs(level) < 0.5 and shifted.shape == (round(5 * SR / 0.9),)


@pytest.mark.parametrize("tempo", [0.9, 1.1])
def test_click_track_keeps_time_within_half_a_percent(tempo):
    shifted = shift(torch.from_numpy(click_track(10, SR))[None], 2, tempo)[0]
    period, jitter = clicks(shifted.numpy(), SR, 0.5 / tempo)
    error = 0.5 / period / tempo - 1
    print(f"tempo {tempo}: {100 * error:+.3f}%, clicks within {jitter:.1f} ms of the grid")
    assert abs(error) < 0.005 and shifted.shape == (round(10 * SR / tempo),)


def test_context_and_target_are_shifted_alike_and_only_listed_tracks_vary(tmp_path):
    separated = Batch.of("separate", tmp_path / "separate.json")
    t = np.arange(3 * SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    for track, ok in (("a", True), ("b", True), ("gone", False)):
        files = separated.files(track)
        write_audio(files["context"], np.stack([tone, 0.5 * tone]), SR)
        write_audio(files["target"], np.stack([tone, 0.5 * tone]), SR)
        write_json(files["status"], {"ok": ok, "stage": "separate", "track": track,
                                     "provenance": f"p{track}"})
    separated.write_record({"a": "pa", "b": "pb", "gone": "pgone"})
    settings = {"variants": [{"semitones": 2, "tempo": 1.0}, {"semitones": -1, "tempo": 0.9}],
                "device": "cpu"}
    # b is in a split without variants; gone failed separation: neither gets any
    statuses = augment_batch(tmp_path / "separate.json", tmp_path / "augment.json", ["a", "gone"],
                             settings)
    assert [s["track"] for s in statuses] == ["a~p+2t1.00", "a~p-1t0.90"]
    assert all(s["ok"] and s["original"] == "a" for s in statuses)
    out = Batch.of("augment", tmp_path / "augment.json")
    for name, frames in (("a~p+2t1.00", 3 * SR), ("a~p-1t0.90", round(3 * SR / 0.9))):
        context, rate = read_audio(out.files(name)["context"])
        target, _ = read_audio(out.files(name)["target"])
        assert rate == SR and context.shape == (2, frames)
        assert np.array_equal(context, target)  # the same samples, the same shift
        # the channels kept apart: the right one still half the left, within 1% (rounding)
        error = np.sqrt(np.mean((context[1] - 0.5 * context[0]) ** 2) / np.mean(context[1] ** 2))
        assert error < 0.01, error
    # a rerun keeps what it made: the files are not rewritten
    mtime = out.files("a~p+2t1.00")["context"].stat().st_mtime_ns
    augment_batch(tmp_path / "separate.json", tmp_path / "augment.json", ["a", "gone"], settings)
    assert out.files("a~p+2t1.00")["context"].stat().st_mtime_ns == mtime


VARIANTS = [{"semitones": 2, "tempo": 1.0}, {"semitones": -1, "tempo": 0.9}]
# song1 is train by the sheet, song2 test; song3 train by the hash, until shard moves it to
# valid, which no track fills: its variants were made for train and must not be used
CONFIG = {"tracks": "tracks.tsv", "weights": "random", "demo": {"seconds": 14},
          "clip": {"seconds": 5, "hop": 2.5}, "augment": {"variants": VARIANTS}}


def test_variants_stay_in_their_originals_split_through_the_dag(tmp_path, random_weights):
    workflow_copy(tmp_path)
    with_weights(tmp_path, random_weights)
    (tmp_path / "tracks.tsv").write_text("track\tsource\tsplit\nsong1\tdemo:song1\ttrain\n"
                                         "song2\tdemo:song2\ttest\nsong3\tdemo:song3\t\n")
    snakemake(tmp_path, "shard", config=CONFIG)
    stats = read_json(tmp_path / "results/shards/stats.json")
    rows = pq.read_table(tmp_path / "results/shards/manifest.parquet").to_pylist()
    splits = {r["track"]: r["split"] for r in rows}
    assert splits["song1"] == "train" and splits["song2"] == "test" and splits["song3"] == "valid"
    variants = [r for r in rows if r["variant"]]
    assert {r["track"] for r in variants} == {"song1~p+2t1.00", "song1~p-1t0.90"}
    for r in rows:
        assert r["split"] == splits[r["original_track"]]  # no variant crosses splits
        assert r["codec"] == "own_demo" and r["track"].startswith(r["original_track"])
    assert stats["variants"] | {"windows_dropped": 0} == {
        "in": 4, "ok": 4, "failed": 0, "windows_dropped": 0,
        "dropped": [{"track": "song3~p+2t1.00", "split": "valid"},
                    {"track": "song3~p-1t0.90", "split": "valid"}]}
    assert stats["variants"]["windows_dropped"] > 0  # counted, not silently lost
    assert stats["tracks_in"] == 3 and stats["splits"]["train"]["variant_samples"] == len(variants)
    # a slower variant is longer: more windows of the same length
    slow = sum(r["track"] == "song1~p-1t0.90" for r in rows)
    assert slow >= sum(r["track"] == "song1" for r in rows)
    # clip settings reclip the variants too, and never re-separate, re-augment or re-tokenize
    jobs = planned_jobs(tmp_path, "shard", config=CONFIG | {"clip": {"seconds": 5, "hop": 2.0}})
    assert set(jobs) == {"clip", "shard"}, jobs
    # a new variant is made, clipped and tokenized alone; the others are kept
    more = CONFIG | {"augment": {"variants": [*VARIANTS, {"semitones": 0, "tempo": 1.1}]}}
    jobs = planned_jobs(tmp_path, "shard", config=more)
    assert set(jobs) == {"augment", "clip", "tokenize", "shard"}, jobs
    snakemake(tmp_path, "shard", config=more)
    b = batch_of("song1", 8)
    made = [t for t in ("song1", "song3") if batch_of(t, 8) == b]  # train by sheet or hash
    log = (tmp_path / f"results/logs/augment/{b}.log").read_text()
    assert f"{len(made)} of {3 * len(made)} tracks to do" in log, log
    assert read_json(tmp_path / "results/shards/stats.json")["variants"]["in"] == 6
