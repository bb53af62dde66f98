"""separate: segments of several tracks batched through Demucs, same output as apply_model."""

import logging
import random

import numpy as np
import pytest
import torch
from demucs.apply import apply_model

from soloist import separate as sp
from soloist.io import read_audio, read_json, write_audio, write_json
from soloist.tracks import Batch, Track
from soloist.weights import load_demucs

RATE = 44100
SETTINGS = {"context": ["drums", "bass", "piano", "guitar"], "target": ["other", "vocals"],
            "keep_stems": True, "shifts": 0, "overlap": 0.25, "segment": None,
            "batch_size": 3, "precision": "fp32", "compile": "auto", "device": "cpu"}


def ingested(folder, seconds: dict[str, float]) -> list[str]:
    """An ingest batch folder of noisy chords of these lengths; returns the track ids."""
    for i, (track, s) in enumerate(seconds.items()):
        rng = np.random.default_rng(i)
        t = np.arange(round(s * RATE)) / RATE
        audio = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(80, 1500, 5))
        audio = 0.1 * audio + 0.02 * rng.standard_normal((2, t.size))
        write_audio(folder / "audio" / f"{track}.flac", audio, RATE)
        write_json(folder / "info" / f"{track}.json",
                   {"ok": True, "stage": "ingest", "track": track, "kind": "file"})
    Batch.of("ingest", folder.with_suffix(".json")).write_record({t: None for t in sorted(seconds)})
    return sorted(seconds)


@pytest.fixture(scope="module")
def demucs_manifest(random_weights):
    return random_weights / "random/demucs/htdemucs_6s.json"


@pytest.mark.parametrize("shifts, compiled", [(0, False), (1, False), (0, True)])
def test_batched_across_tracks_equals_apply_model(tmp_path, caplog, demucs_manifest, shifts,
                                                  compiled):
    # 9 s spans two 7.8 s segments, 3 s is shorter than one: batches of 2 mix tracks and
    # lengths, and the last one is short (padded to the compiled shape)
    tracks = ingested(tmp_path / "in", {"long": 9.0, "short": 3.0})
    caplog.set_level(logging.INFO, "soloist.separate")
    settings = SETTINGS | {"shifts": shifts, "compile": compiled, "batch_size": 2}
    statuses = sp.separate_batch(tmp_path / "in.json", tmp_path / "out.json", settings, {},
                                 demucs_manifest, RATE)
    assert [s["ok"] for s in statuses] == [True, True]
    (timing,) = [r.getMessage() for r in caplog.records if "separated" in r.getMessage()]
    assert ("compiling" in timing) == compiled, timing
    assert "torch.compile of Demucs failed" not in caplog.text
    model = load_demucs(demucs_manifest).eval()
    for track in tracks:
        mix = torch.from_numpy(read_audio(tmp_path / "in" / "audio" / f"{track}.flac")[0])
        ref = mix.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        random.seed(track)
        with torch.inference_mode():
            want = apply_model(model, ((mix - mean) / std)[None], shifts=shifts,
                               overlap=0.25, split=True)[0] * std + mean
        for i, name in enumerate(model.sources):
            got = read_audio(tmp_path / "out" / track / "stems" / f"{name}.flac")[0]
            expected = np.clip(want[i].numpy(), -1, 1)
            # 16-bit FLAC is the only difference
            assert got.shape == expected.shape
            assert np.abs(got - expected).max() < 1e-3, (track, name)


def test_bad_track_fails_alone(tmp_path, demucs_manifest):
    ingested(tmp_path / "in", {"good": 2.0, "bad": 2.0})
    (tmp_path / "in" / "audio" / "bad.flac").write_bytes(b"not a flac file")
    statuses = sp.separate_batch(tmp_path / "in.json", tmp_path / "out.json", SETTINGS, {},
                                 demucs_manifest, RATE)
    bad, good = statuses  # sorted by track id
    assert good["ok"] and read_audio(tmp_path / "out/good/context.flac")[0].shape == (2, 2 * RATE)
    assert not bad["ok"] and bad["stage"] == "separate" and "LibsndfileError" in bad["reason"]
    assert read_json(tmp_path / "out/bad/separate.json") == bad
    assert (tmp_path / "out/bad/context.flac").stat().st_size == 0


def test_compile_auto_waits_for_a_job_long_enough_to_repay_it(tmp_path):
    tracks = []
    for track, seconds in {"a": 1000.0, "b": 900.0}.items():
        write_json(tmp_path / f"{track}.json", {"ok": True, "duration": seconds})
        tracks.append(Track(track, {"ingest": {"status": tmp_path / f"{track}.json"}}))
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert sp._compile("auto", cpu, tracks)  # 1900 s of audio on a CPU
    assert not sp._compile("auto", cpu, tracks[:1])
    assert not sp._compile("auto", gpu, tracks)  # a GPU needs hours to repay the compile
    assert sp._compile(True, cpu, tracks[:1]) and not sp._compile(False, cpu, tracks)
