"""tokenize: EnCodec codes of whole tracks, chunked and batched."""

import math

import numpy as np
import pytest

from soloist import tokenize as tk
from soloist.fetch_weights import load_encodec
from soloist.io import read_json, read_npy, write_audio, write_json

SETTINGS = {"bandwidth": 3.0, "chunk_seconds": 2.0, "batch_size": 3, "device": "cpu"}


@pytest.fixture(scope="module")
def encodec(random_weights):
    return load_encodec(random_weights / "random/encodec/encodec_24khz.json", 3.0)


def music(seconds: float, sample_rate: int = 44100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 2000, 6))
    return (0.05 * tones * (1 + np.sin(2 * np.pi * 2 * t)) + 0.01 * rng.standard_normal(t.size)
            ).astype(np.float32)


def test_chunked_codes_equal_whole_track_codes_away_from_seams(encodec):
    tracks = [music(7.3), music(3.1, seed=1)]
    chunked = tk.encode(encodec, tracks, 44100, chunk_seconds=2.0, batch_size=3)
    whole = tk.encode(encodec, tracks, 44100, chunk_seconds=60.0, batch_size=1)
    for track, a, b in zip(tracks, chunked, whole, strict=True):
        frames = math.ceil(round(track.size * 24000 / 44100) / 320)
        assert a.shape == b.shape == (4, frames) and a.dtype == np.int16
        assert 0 <= a.min() and a.max() < 1024
        # EnCodec 24 kHz is causal: the first chunk sees what the whole track sees (codes
        # can still flip where float rounding meets a near-tie between two code vectors)
        first = np.mean(a[:, :150] == b[:, :150])
        print(f"identical in the first chunk: {first:.3f}")
        assert first > 0.85, first
    same = [(a == b).ravel() for a, b in zip(chunked, whole, strict=True)]
    identical = np.mean(np.concatenate(same))
    print(f"identical codes: {identical:.3f}")
    assert identical > 0.8, identical


def test_tokenize_writes_codes_and_status(tmp_path, random_weights):
    audio = np.stack([music(5.0), music(5.0, seed=2)])
    write_audio(tmp_path / "context.flac", audio, 44100)
    write_audio(tmp_path / "target.flac", audio[::-1], 44100)
    write_json(tmp_path / "separate.json", {"ok": True, "stage": "separate"})
    out = {k: tmp_path / f"out/{k}" for k in ("context.npy", "target.npy", "tokens.json")}
    status = tk.tokenize("t", tmp_path / "context.flac", tmp_path / "target.flac",
                         tmp_path / "separate.json", *out.values(),
                         random_weights / "random/encodec/encodec_24khz.json", SETTINGS)
    assert status == read_json(out["tokens.json"])
    assert status | {"ok": True} == {
        "ok": True, "stage": "tokenize", "track": "t", "codebooks": 4, "frames": 375,
        "frame_rate": 75.0, "bandwidth": 3.0, "cardinality": 1024, "weights": "random"}
    assert read_npy(out["context.npy"]).shape == read_npy(out["target.npy"]).shape == (4, 375)


def test_upstream_failure_passes_through(tmp_path, random_weights):
    upstream = {"ok": False, "stage": "ingest", "reason": "silent"}
    write_json(tmp_path / "separate.json", upstream)
    out = [tmp_path / f for f in ("c.npy", "t.npy", "tokens.json")]
    status = tk.tokenize("t", "nope.flac", "nope.flac", tmp_path / "separate.json", *out,
                         random_weights / "random/encodec/encodec_24khz.json", SETTINGS)
    assert status == upstream == read_json(out[2])
    assert out[0].stat().st_size == 0 and out[1].stat().st_size == 0
