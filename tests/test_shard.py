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
from soloist.tracks import Track

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
                                   "weights": "random", "model": "encodec_24khz"})
    codes = (np.arange(4 * frames).reshape(4, frames) % 1024).astype(np.int16)
    write_npy(d / "c.npy", codes)
    write_npy(d / "t.npy", codes + 1)
    return Track(track, {"ingest": {"status": d / "info.json"},
                         "clip": {"status": d / "clip.json", "windows": d / "w.parquet"},
                         "tokenize": {"status": d / "tokens.json", "context": d / "c.npy",
                                      "target": d / "t.npy"}})


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


def demo_songs(n: int) -> list[str]:
    names = [f"demo{i:02d}" for i in range(1, n + 1)]
    # the hash alone leaves valid empty for these: the guarantee has work to do
    assert "valid" not in {sh.split_of(t, SETTINGS["fractions"]) for t in names}
    return names


def manifest_splits(manifest: list[dict]) -> dict[str, str]:
    return {r["track"]: r["split"] for r in manifest}


@pytest.mark.parametrize("n", [3, 5, 8])
def test_every_split_gets_a_track_that_gives_samples(tmp_path, n):
    names = demo_songs(n)
    # hashed into valid and test, but they give no sample: they must not fill those splits
    assert sh.split_of("broken9", SETTINGS["fractions"]) == "valid"
    assert sh.split_of("quiet7", SETTINGS["fractions"]) == "test"
    tracks = [make_track(tmp_path / "in", t, 2) for t in names]
    tracks += [make_track(tmp_path / "in", "broken9", 2, ok=False),
               make_track(tmp_path / "in", "quiet7", 0)]
    stats, manifest = run(tmp_path, tracks, "one")
    assert all(stats["splits"][s]["samples"] > 0 for s in sh.SPLITS), stats["splits"]
    assert stats["empty_splits"] == [] and stats["warnings"] == []
    splits = manifest_splits(manifest)
    moved = [t for t in names if splits[t] != sh.split_of(t, SETTINGS["fractions"])]
    hashed_empty = set(sh.SPLITS) - {sh.split_of(t, SETTINGS["fractions"]) for t in names}
    assert len(moved) == len(hashed_empty)  # only as many moves as empty splits
    assert {t["track"]: t["split"] for t in stats["per_track"] if t["windows"]} == splits
    _, again = run(tmp_path, tracks, "two")
    assert again == manifest


def test_explicit_splits_are_never_moved(tmp_path):
    names = demo_songs(5)
    tracks = [make_track(tmp_path / "in", t, 2) for t in names]
    # demo01 is the first by id of train, which gives valid a track: but the sheet put it there
    stats, manifest = run(tmp_path, tracks, splits={"demo01": "train"})
    splits = manifest_splits(manifest)
    assert splits["demo01"] == "train" and splits["demo03"] == "valid"
    assert set(splits.values()) == set(sh.SPLITS) and stats["empty_splits"] == []
    # only explicit tracks in the big split: nothing to take, valid stays empty
    tracks = [make_track(tmp_path / "in2", t, 2) for t in demo_songs(3)]
    stats, manifest = run(tmp_path, tracks, "out2",
                          splits={"demo01": "train", "demo03": "train"})
    assert manifest_splits(manifest) == {"demo01": "train", "demo02": "test",
                                         "demo03": "train"}
    assert stats["empty_splits"] == ["valid"]


def test_too_few_tracks_warn_of_the_empty_split(tmp_path, caplog):
    tracks = [make_track(tmp_path / "in", t, 2) for t in demo_songs(2)]
    with caplog.at_level("WARNING", logger="soloist.shard"):
        stats, manifest = run(tmp_path, tracks)
    assert set(manifest_splits(manifest).values()) == {"train", "test"}
    assert stats["empty_splits"] == ["valid"]
    assert stats["warnings"] == ["split 'valid' (fraction 0.1) has no track: too few tracks "
                                 "give samples (2)"]
    assert stats["warnings"][0] in caplog.text
    assert json.loads((tmp_path / "out/stats.json").read_text())["empty_splits"] == ["valid"]
