"""Rule-level tests: each rule run alone by Snakemake (--allowed-rules) on tiny fixtures."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import snakemake, with_weights, workflow_copy
from loopback import make_tone, serve_dir, write_rss

from soloist.clip import clip
from soloist.config import batch_of
from soloist.io import read_json, read_npy, write_audio, write_json
from soloist.synth import make_song
from soloist.tokenize import tokenize
from soloist.tracks import Batch

CONFIG = {"tracks": "tracks.tsv", "weights": "random", "demo": {"seconds": 6},
          "ingest": {"ytdlp": {"retries": 0, "socket_timeout": 5}}}
CLIP = {"frame_seconds": 0.1, "hop_seconds": 0.05, "active_percentile": 95, "relative_db": 25,
        "floor_db": -50, "bridge_seconds": 2.5, "min_active": 0.8, "min_context_active": 0.5}


@pytest.fixture
def workdir(tmp_path):
    """A workflow copy whose sheet has one local file track ``t`` (an 11 s tone)."""
    workflow_copy(tmp_path)
    make_tone(tmp_path / "tone.wav", 11)
    (tmp_path / "tracks.tsv").write_text(f"track\tsource\nt\t{tmp_path}/tone.wav\n")
    return tmp_path


def run_rule(workdir, rules, *targets, config=CONFIG):
    """Make ``targets`` with only ``rules`` (space-separated) allowed to run."""
    snakemake(workdir, *targets, "--allowed-rules", *rules.split(), config=config)
    for target in targets:
        assert (workdir / target).exists(), target


B = batch_of("t", 8)  # the batch of track t


def write_record(workdir, stage):
    """results/<stage>/<B>.json: the record of a batch of track t, whose files are staged."""
    batch = Batch.of(stage, workdir / f"results/{stage}/{B}.json")
    batch.write_record({"t": read_json(batch.files("t")["status"]).get("provenance")})


def stage_separated(workdir, seconds=11.0):
    """results/separate/<B>/t/*: a backing with a solo over its middle."""
    t = np.arange(round(seconds * 44100)) / 44100
    backing = 0.2 * np.sin(2 * np.pi * 110 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
    solo = 0.3 * np.sin(2 * np.pi * 660 * t) * ((t > 0.5) & (t < seconds - 0.2))
    d = workdir / f"results/separate/{B}/t"
    write_audio(d / "context.flac", np.stack([backing, backing]), 44100)
    write_audio(d / "target.flac", np.stack([solo, solo]), 44100)
    write_json(d / "separate.json", {"ok": True, "stage": "separate", "track": "t"})
    write_record(workdir, "separate")
    return d


def test_demo_corpus(workdir):
    (workdir / "tracks.tsv").write_text("track\tsource\nsong\tdemo:song\n")
    run_rule(workdir, "demo_corpus", "results/demo_corpus/song/truth.json")
    audio, rate = sf.read(workdir / "results/demo_corpus/song/mixture.flac")
    assert rate == 44100 and audio.shape == (6 * 44100, 2)
    assert read_json(workdir / "results/demo_corpus/song/truth.json")["name"] == "song"


def test_fetch_weights(workdir):
    target = "resources/weights/random/codec/encodec_24khz.json"
    run_rule(workdir, "fetch_weights", target)
    manifest = read_json(workdir / target)
    assert manifest["random"] and sorted(manifest["files"]) == [
        "encodec_24khz/config.json", "encodec_24khz/model.safetensors"]
    assert all((workdir / target).parent.joinpath(f).is_file() for f in manifest["files"])


def test_resolve(workdir):
    make_tone(workdir / "a.mp3", 2)
    with serve_dir(workdir) as base_url:
        write_rss(workdir / "feed.xml", base_url, ["a.mp3", "a.mp3"])
        (workdir / "tracks.tsv").write_text(f"track\tsource\nfeed\t{base_url}/feed.xml\n")
        run_rule(workdir, "resolve", "results/resolve/feed.tsv")
    lines = (workdir / "results/resolve/feed.tsv").read_text().splitlines()
    assert lines[0] == "track\turl\ttitle\terror"
    assert [line.split("\t")[0] for line in lines[1:]] == ["feed.001", "feed.002"]


def test_ingest(workdir):
    run_rule(workdir, "ingest", f"results/ingest/{B}.json")
    assert [t["track"] for t in read_json(workdir / f"results/ingest/{B}.json")["tracks"]] == ["t"]
    info = read_json(workdir / f"results/ingest/{B}/info/t.json")
    assert info["ok"] and info["kind"] == "file" and info["duration"] == pytest.approx(11)
    assert sf.info(workdir / f"results/ingest/{B}/audio/t.flac").samplerate == 44100


def test_separate(workdir, random_weights):
    with_weights(workdir, random_weights)
    d = workdir / f"results/ingest/{B}"
    write_audio(d / "audio/t.flac", 0.1 * np.random.default_rng(0).standard_normal((2, 44100 * 8)),
                44100)
    write_json(d / "info/t.json", {"ok": True, "stage": "ingest", "track": "t", "kind": "file",
                                   "source": str(workdir / "tone.wav")})
    write_record(workdir, "ingest")
    run_rule(workdir, "separate", f"results/separate/{B}.json")
    status = read_json(workdir / f"results/separate/{B}/t/separate.json")
    assert status["ok"] and status["weights"] == "random"
    assert status["unused_stems"] == []  # htdemucs_6s: every stem has a role
    for role in ("context", "target"):
        assert sf.info(workdir / f"results/separate/{B}/t/{role}.flac").frames == 44100 * 8


def test_clip(workdir):
    stage_separated(workdir)
    run_rule(workdir, "clip", f"results/clip/{B}.json")
    windows = pq.read_table(workdir / f"results/clip/{B}/t/windows.parquet").to_pylist()
    assert [w["start"] for w in windows] == [0.0]  # one 10 s window fits in 11 s
    assert read_json(workdir / f"results/clip/{B}/t/clip.json")["windows"] == 1


def test_tokenize(workdir, random_weights):
    with_weights(workdir, random_weights)
    stage_separated(workdir)
    run_rule(workdir, "tokenize", f"results/tokenize/{B}.json")
    assert read_npy(workdir / f"results/tokenize/{B}/t/target.npy").shape == (4, 825)
    status = read_json(workdir / f"results/tokenize/{B}/t/tokens.json")
    # weights: random takes the shipped codec (tokenize.model: auto); no Demucs made the stems
    assert status["model"] == "own_demo" and status["weights"] == "shipped"


def test_shard(workdir, random_weights):
    d = stage_separated(workdir)
    write_json(workdir / f"results/ingest/{B}/info/t.json",
               {"ok": True, "stage": "ingest", "track": "t", "row": "t", "source": "tone.wav"})
    clip("t", d / "context.flac", d / "target.flac", d / "separate.json",
         workdir / f"results/clip/{B}/t/windows.parquet",
         workdir / f"results/clip/{B}/t/clip.json", {**CLIP, "seconds": 4.0, "hop": 2.0})
    out = workdir / f"results/tokenize/{B}/t"
    tokenize("t", d / "context.flac", d / "target.flac", d / "separate.json",
             out / "context.npy", out / "target.npy", out / "tokens.json",
             random_weights / "random/codec/encodec_24khz.json",
             {"codebooks": None, "chunk_seconds": 10, "warmup_seconds": 0.5, "batch_size": 4,
              "precision": "fp32", "compile": False, "device": "cpu"})
    for stage in ("ingest", "clip", "tokenize"):
        write_record(workdir, stage)
    run_rule(workdir, "sheet shard", "results/shards/manifest.parquet")
    manifest = pq.read_table(workdir / "results/shards/manifest.parquet").to_pylist()
    assert len(manifest) == 4 and {r["frames"] for r in manifest} == {300}
    assert read_json(workdir / "results/shards/stats.json")["tracks_ok"] == 1



def test_keep_intermediates_false_deletes_audio_once_used(tmp_path, random_weights):
    workflow_copy(tmp_path)
    with_weights(tmp_path, random_weights)
    make_song("s", tmp_path / "multitrack", seconds=20)
    (tmp_path / "tracks.tsv").write_text(f"track\tsource\ns\t{tmp_path}/multitrack/stems\n")
    snakemake(tmp_path, "shard", config=CONFIG | {"keep_intermediates": False})
    assert read_json(tmp_path / "results/shards/stats.json")["tracks_ok"] == 1
    b = batch_of("s", 8)
    assert (tmp_path / f"results/tokenize/{b}/s/target.npy").is_file()
    assert (tmp_path / f"results/ingest/{b}/info/s.json").is_file()
    for temp in (f"ingest/{b}/audio", f"separate/{b}"):
        assert not (tmp_path / "results" / temp).exists(), temp


def test_train_and_evaluate(workdir, random_weights):
    from test_train import write_shards

    with_weights(workdir, random_weights)
    shards = workdir / "results/shards"
    write_shards(shards, (("train", 1, 12), ("valid", 1, 4), ("test", 1, 6)))
    (shards / "manifest.parquet").touch()
    config = CONFIG | {"train": {"steps": 4, "batch_size": 4, "seconds": 2, "workers": 0,
                                 "eval_every": 2, "checkpoint_every": 2, "warmup_steps": 1},
                       "evaluate": {"examples": 1, "batches": 1, "seconds": 2}}
    run_rule(workdir, "train", "results/train/model.safetensors", config=config)
    assert read_json(workdir / "results/train/train.json")["steps"] == 4
    run_rule(workdir, "evaluate", "results/evaluate/metrics.json", config=config)
    assert read_json(workdir / "results/evaluate/metrics.json")["samples"] == 6
    assert sf.info(workdir / "results/evaluate/examples/00_generated.wav").frames == 2 * 24000
