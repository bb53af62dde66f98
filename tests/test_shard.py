"""shard: WebDataset tars, Parquet manifest, stats, failures; byte-identical reruns."""

import csv
import io
import json
import tarfile
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from soloist import shard as sh
from soloist.clip import WINDOW_SCHEMA
from soloist.io import failed, write_json, write_npy

SETTINGS = {"fractions": {"train": 0.8, "valid": 0.1, "test": 0.1}, "max_samples": 3,
            "max_bytes": 10**8}


def make_track(root, track, windows, ok=True, row=None, frames=2000):
    d = root / track
    d.mkdir(parents=True)
    info = {"ok": True, "stage": "ingest", "track": track, "row": row or track,
            "source": f"/music/{track}.wav", "title": track.upper()}
    rows = [{"track": track, "window": i, "start": 2.5 * i, "end": 2.5 * i + 10.0,
             "active_fraction": 0.9, "context_active_fraction": 1.0, "target_rms_db": -20.0,
             "context_rms_db": -18.0} for i in range(windows)]
    pq.write_table(pa.Table.from_pylist(rows, schema=WINDOW_SCHEMA), d / "w.parquet")
    clip_status = {"ok": True, "stage": "clip", "duration": frames / 75,
                   "active_seconds": 10.0 * windows}
    write_json(d / "info.json", info)
    write_json(d / "clip.json", clip_status if ok else failed("clip", "track is 4.0 s, short"))
    write_json(d / "tokens.json", {"ok": True, "stage": "tokenize", "frame_rate": 75.0,
                                   "weights": "random"})
    codes = (np.arange(4 * frames).reshape(4, frames) % 1024).astype(np.int16)
    write_npy(d / "c.npy", codes)
    write_npy(d / "t.npy", codes + 1)
    return sh.TrackFiles(track, d / "info.json", d / "clip.json", d / "w.parquet",
                         d / "tokens.json", d / "c.npy", d / "t.npy")


@pytest.fixture
def tracks(tmp_path):
    return [make_track(tmp_path / "in", "a", 4), make_track(tmp_path / "in", "p.001", 3, row="p"),
            make_track(tmp_path / "in", "b", 0), make_track(tmp_path / "in", "c", 0, ok=False)]


def run(tmp_path, tracks, out="out", splits=None):
    stats = sh.shard(tracks, tmp_path / out, tmp_path / out / "failures.tsv",
                     splits or {}, SETTINGS)
    return stats, pq.read_table(tmp_path / out / "manifest.parquet").to_pylist()


def test_manifest_stats_and_failures_reconcile(tmp_path, tracks):
    stats, manifest = run(tmp_path, tracks, splits={"p": "test"})
    assert stats["tracks_in"] == 4 and stats["tracks_ok"] == 3 and stats["tracks_failed"] == 1
    assert stats["samples_in_manifest"] == stats["windows_in_clip_tables"] == 7 == len(manifest)
    assert stats["tracks_without_windows"] == ["b"]
    assert stats["weights"] == "random" and "NOT musically meaningful" in stats["warning"]
    assert {r["track"]: r["split"] for r in manifest}["p.001"] == "test"  # explicit split
    with open(tmp_path / "out/failures.tsv") as f:
        failures = list(csv.DictReader(f, delimiter="\t"))
    assert failures == [{"track": "c", "row": "c", "source": "/music/c.wav", "stage": "clip",
                         "reason": "track is 4.0 s, short"}]
    for name in ("clips_per_track", "rms", "durations"):
        assert (tmp_path / f"out/plots/{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_shards_read_back_with_webdataset(tmp_path, tracks):
    _, manifest = run(tmp_path, tracks)
    shards = sorted({r["shard"] for r in manifest})
    assert Counter(r["shard"] for r in manifest).most_common(1)[0][1] <= 3  # max_samples
    urls = [str(tmp_path / "out" / s) for s in shards]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):  # raw bytes: no pickle decoding
        meta = json.loads(sample["json"])
        context = np.load(io.BytesIO(sample["context.npy"]), allow_pickle=False)
        target = np.load(io.BytesIO(sample["target.npy"]), allow_pickle=False)
        assert context.shape == target.shape == (4, 750) and context.dtype == np.int16
        np.testing.assert_array_equal(target, context + 1)
        start = round(meta["start"] * 75)
        assert context[0, 0] == start % 1024  # the window's own frames
        seen[sample["__key__"]] = meta["track"]
    assert seen == {r["key"]: r["track"] for r in manifest}
    assert "p~001~00002" in seen  # dots in track ids stay out of WebDataset keys


def test_rerun_is_byte_identical(tmp_path, tracks):
    _, manifest = run(tmp_path, tracks, "one")
    run(tmp_path, tracks, "two")
    for name in ["manifest.parquet", "failures.tsv"] + sorted({r["shard"] for r in manifest}):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    with tarfile.open(tmp_path / "one" / manifest[0]["shard"]) as tar:
        assert {(m.mtime, m.uid, m.mode) for m in tar.getmembers()} == {(0, 0, 0o644)}


def test_split_is_stable_and_follows_the_fractions():
    splits = Counter(sh.split_of(f"track{i}", SETTINGS["fractions"]) for i in range(4000))
    assert sh.split_of("track7", SETTINGS["fractions"]) == sh.split_of("track7",
                                                                        SETTINGS["fractions"])
    assert abs(splits["train"] / 4000 - 0.8) < 0.03 and abs(splits["test"] / 4000 - 0.1) < 0.02


def test_sample_keys_are_one_to_one():
    assert sh.sample_key("a.b", 1) != sh.sample_key("a_b", 1)
    assert "." not in sh.sample_key("a.b.c", 12)
