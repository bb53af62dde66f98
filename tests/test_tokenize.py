"""tokenize: codec codes of whole tracks, chunked and batched, for every codec."""

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from soloist import codec
from soloist import tokenize as tk
from soloist.codec import decode, encode
from soloist.device import fit_batch
from soloist.io import read_json, read_npy, write_audio, write_json
from soloist.tracks import Batch
from soloist.weights import CODECS, load_codec

SETTINGS = {"codebooks": None, "chunk_seconds": 2.0, "warmup_seconds": 0.5, "batch_size": 3,
            "precision": "fp32", "compile": False, "device": "cpu"}


@pytest.fixture(scope="module")
def encodec(random_weights):
    return load_codec(random_weights / "random/codec/encodec_24khz.json")


def music(seconds: float, sample_rate: int = 44100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 2000, 6))
    return (0.05 * tones * (1 + np.sin(2 * np.pi * 2 * t)) + 0.01 * rng.standard_normal(t.size)
            ).astype(np.float32)


@pytest.mark.parametrize("name", CODECS)
def test_chunked_codes_equal_whole_track_codes(name, codec_manifests):
    model = load_codec(codec_manifests[name])
    tracks = [music(7.3), music(3.1, seed=1)]
    chunked = codec.encode(model, tracks, 44100, chunk_seconds=2.0, batch_size=3,
                           warmup_seconds=0.5)
    whole = codec.encode(model, tracks, 44100, chunk_seconds=60.0, batch_size=1)
    spec, first_chunk = CODECS[name], round(2.5 * model.frame_rate)
    for track, a, b in zip(tracks, chunked, whole, strict=True):
        frames = math.ceil(round(track.size * spec.sample_rate / 44100) / model.hop)
        assert a.shape == b.shape == (spec.codebooks, frames) and a.dtype == np.int16
        assert 0 <= a.min() and a.max() < model.cardinality
        # the first chunk (with its warm-up) ends where the next begins, its lookahead read
        # (codes can still flip where float rounding meets a near-tie between two codes)
        first = np.mean(a[:, :first_chunk] == b[:, :first_chunk])
        print(f"{name}: identical in the first chunk: {first:.3f}")
        assert first > 0.85, first
    same = [(a == b).ravel() for a, b in zip(chunked, whole, strict=True)]
    identical = np.mean(np.concatenate(same))
    print(f"{name}: identical codes: {identical:.3f}")
    assert identical > 0.8, identical


def test_a_bf16_encoder_gives_codes_of_the_same_shape_and_range(encodec):
    track = music(3.1)
    fp32 = codec.encode(encodec, [track], 44100, chunk_seconds=2.0, batch_size=2)[0]
    bf16 = codec.encode(dataclasses.replace(encodec, precision="bf16"), [track], 44100,
                        chunk_seconds=2.0, batch_size=2)[0]
    assert bf16.shape == fp32.shape and bf16.dtype == np.int16
    assert 0 <= bf16.min() and bf16.max() < encodec.cardinality
    assert not np.array_equal(bf16, fp32)  # the encoder did run in bf16


def test_a_compiled_encoder_sees_one_batch_shape_and_gives_the_same_codes(encodec,
                                                                          random_weights):
    assert load_codec(random_weights / "random/codec/encodec_24khz.json", compile=True).compiled
    shapes = []
    hook = encodec.model.encoder.register_forward_pre_hook(
        lambda module, args: shapes.append(tuple(args[0].shape)))
    try:  # the flag alone (torch's compile is torch's to test): 6 chunks in batches of 4
        tracks = [music(7.3), music(3.1, seed=1)]
        eager = codec.encode(encodec, tracks, 44100, chunk_seconds=2.0, batch_size=4)
        assert len(set(shapes)) == 2  # the last batch has 2 rows
        shapes.clear()
        padded = codec.encode(dataclasses.replace(encodec, encoder=encodec.model.encoder),
                              tracks, 44100, chunk_seconds=2.0, batch_size=4)
    finally:
        hook.remove()
    assert len(shapes) == 2 and len(set(shapes)) == 1 and shapes[0][0] == 4
    for a, b in zip(eager, padded, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["encodec_24khz", "encodec_32khz", "dac_44khz"])
def test_channels_last_convolutions_compute_what_the_encoder_does(name, codec_manifests):
    model = load_codec(codec_manifests[name]).model
    audio = torch.from_numpy(music(1.3, model.config.sampling_rate)).float()[None, None]
    with torch.inference_mode():
        before = model.encoder(audio)
        # tokenize.compile's layout: every convolution (strided, dilated, padded) converted
        assert codec.channels_last_convs(model.encoder) == sum(
            isinstance(m, torch.nn.Conv1d) for m in model.encoder.modules())
        after = model.encoder(audio)
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())


def test_a_compile_that_fails_falls_back_to_the_eager_encoder(encodec, random_weights,
                                                              caplog):
    from torch._inductor import config as inductor

    compiled = load_codec(random_weights / "random/codec/encodec_24khz.json", compile=True)
    track = music(3.1)
    with inductor.patch({"cpp.cxx": (None, "/bin/false"), "force_disable_caches": True}):
        codes = codec.encode(compiled, [track], 44100, chunk_seconds=2.0, batch_size=2)[0]
    assert not compiled.compiled
    assert "torch.compile of the codec's encoder failed, encoding without it" in caplog.text
    eager = codec.encode(encodec, [track], 44100, chunk_seconds=2.0, batch_size=2)[0]
    np.testing.assert_array_equal(codes, eager)


def test_warmup_makes_codes_after_a_seam_match_the_whole_track(encodec):
    track = music(7.3)
    whole = codec.encode(encodec, [track], 44100, chunk_seconds=60.0, batch_size=1)[0]
    after_seams = {}
    for warmup, first_seam in ((0.0, 150), (0.5, 150 + 37)):  # 0.5 s = 37 frames of 320
        codes = codec.encode(encodec, [track], 44100, chunk_seconds=2.0, batch_size=3,
                          warmup_seconds=warmup)[0]
        assert codes.shape == whole.shape
        # the 0.3 s after each seam: there a chunk without warm-up starts from nothing
        after = [codes[:, s:s + 22] == whole[:, s:s + 22] for s in range(first_seam, 520, 150)]
        after_seams[warmup] = np.mean(np.concatenate(after, axis=1))
    print(f"identical after seams: {after_seams}")
    assert after_seams[0.5] > 0.9 and after_seams[0.5] > after_seams[0.0] + 0.2


# name -> (K, cardinality, frame rate, frames of 5 s, sample rate)
LAYOUTS = {"encodec_24khz": (4, 1024, 75.0, 375, 24000),
           "encodec_32khz": (4, 2048, 50.0, 250, 32000),
           "dac_44khz": (9, 1024, 44100 / 512, 431, 44100)}


@pytest.mark.parametrize("name", CODECS)
def test_tokenize_writes_codes_and_status(name, tmp_path, codec_manifests):
    audio = np.stack([music(5.0), music(5.0, seed=2)])
    write_audio(tmp_path / "context.flac", audio, 44100)
    write_audio(tmp_path / "target.flac", audio[::-1], 44100)
    write_json(tmp_path / "separate.json", {"ok": True, "stage": "separate"})
    out = {k: tmp_path / f"out/{k}" for k in ("context.npy", "target.npy", "tokens.json")}
    status = tk.tokenize("t", tmp_path / "context.flac", tmp_path / "target.flac",
                         tmp_path / "separate.json", *out.values(), codec_manifests[name],
                         SETTINGS)
    assert status == read_json(out["tokens.json"])
    manifest = read_json(codec_manifests[name])
    K, cardinality, frame_rate, frames, rate = LAYOUTS[name]
    assert status | {"ok": True} == {
        "ok": True, "stage": "tokenize", "track": "t", "roles": ["context", "target"],
        "codebooks": K, "frames": frames,
        "frame_rate": frame_rate, "cardinality": cardinality, "weights": "random",
        # which codec made them, so that a model trained on them finds it again
        "model": name, "files": manifest["files"], "sample_rate": rate, "provenance": None}
    for role in ("context", "target"):
        codes = read_npy(out[f"{role}.npy"])
        assert codes.shape == (K, frames) and 0 <= codes.min() and codes.max() < cardinality
    fewer = tk.tokenize("t", tmp_path / "context.flac", tmp_path / "target.flac",
                        tmp_path / "separate.json", *out.values(), codec_manifests[name],
                        SETTINGS | {"codebooks": 2})
    # the coarsest two: a residual quantizer's first codes do not depend on the later ones
    assert fewer["codebooks"] == 2
    assert np.array_equal(read_npy(out["target.npy"]), codes[:2])


def test_upstream_failure_passes_through(tmp_path, random_weights):
    upstream = {"ok": False, "stage": "ingest", "reason": "silent"}
    write_json(tmp_path / "separate.json", upstream)
    out = [tmp_path / f for f in ("c.npy", "t.npy", "tokens.json")]
    status = tk.tokenize("t", "nope.flac", "nope.flac", tmp_path / "separate.json", *out,
                         random_weights / "random/codec/encodec_24khz.json", SETTINGS)
    assert status == upstream | {"provenance": None} == read_json(out[2])
    assert out[0].stat().st_size == 0 and out[1].stat().st_size == 0


def test_batch_of_tracks_shares_forward_passes_and_isolates_bad_ones(tmp_path, random_weights,
                                                                    encodec):
    separated = tmp_path / "separated"
    songs = {"a": music(4.5, seed=3), "b": music(2.5, seed=4)}
    for track, mono in songs.items():
        write_audio(separated / track / "context.flac", np.stack([mono, mono]), 44100)
        write_audio(separated / track / "target.flac", np.stack([mono, mono])[:, ::-1], 44100)
    (separated / "empty").mkdir()
    for role in ("context", "target"):  # a 0-frame FLAC does not open: a WAV inside does
        sf.write(separated / "empty" / f"{role}.flac", np.zeros((0, 2)), 44100, format="WAV")
    (separated / "corrupt").mkdir()
    (separated / "corrupt" / "context.flac").write_bytes(b"not a flac")
    (separated / "corrupt" / "target.flac").write_bytes(b"not a flac")
    for track in ("a", "b", "empty", "corrupt"):
        write_json(separated / track / "separate.json", {"ok": True, "stage": "separate"})
    Batch.of("separate", tmp_path / "separated.json").write_record(
        {t: None for t in ("a", "b", "corrupt", "empty")})
    statuses = tk.tokenize_batch({"separate": tmp_path / "separated.json"}, tmp_path / "out.json",
                                 random_weights / "random/codec/encodec_24khz.json", SETTINGS,
                                 {})
    a, b, corrupt, empty = statuses  # sorted by track id
    assert a["ok"] and b["ok"]
    assert not corrupt["ok"] and "LibsndfileError" in corrupt["reason"]
    assert not empty["ok"] and "no samples" in empty["reason"]
    for bad in ("corrupt", "empty"):
        assert (tmp_path / "out" / bad / "target.npy").stat().st_size == 0
        assert read_json(tmp_path / "out" / bad / "tokens.json")["stage"] == "tokenize"
    # each track's codes come from its own audio, though its chunks shared batches with
    # the other track's: compare with that track encoded on its own
    for track, status in (("a", a), ("b", b)):
        alone = codec.encode(encodec, [songs[track]], 44100, chunk_seconds=2.0, batch_size=3,
                          warmup_seconds=0.5)[0]
        got = read_npy(tmp_path / "out" / track / "context.npy")
        assert got.shape == alone.shape == (4, status["frames"])
        assert np.mean(got == alone) > 0.8


def test_gpu_batches_fit_the_free_memory_and_the_kernels_index_range():
    # the GPU paths that never ask a GPU for its free memory, so they run here too
    chunk = round(10.5 * 24000)  # config.yaml's chunk + warm-up
    row = chunk * CODECS["encodec_24khz"].peak_bytes
    assert fit_batch(64, row, 139 * 2**30) == 64  # an idle H200
    assert fit_batch(64, row, 11 * 2**30) == 42   # a 12 GB card with the model on it
    assert fit_batch(64, row, 2**20) == 1

    def on(device, causal=True, channels=32):  # what chunk_batch reads of a loaded codec
        return SimpleNamespace(name="encodec_24khz", sample_rate=24000, channels=channels,
                               causal=causal, device=torch.device(device))

    # EnCodec's widest activation [B, 32, samples] must stay under 2**31 elements
    assert codec.chunk_batch(266, on("cuda"), 10, 0.5) == 266
    with pytest.raises(ValueError, match="tokenize.batch_size: 267 .* at most 266"):
        codec.chunk_batch(267, on("cuda"), 10, 0.5)
    assert codec.chunk_batch(267, on("cpu"), 10, 0.5) == 267
    # a codec that looks ahead reads the warm-up after the chunk too (causal: 133 fit)
    assert codec.chunk_batch(127, on("cuda", causal=False, channels=64), 10, 0.5) == 127
    with pytest.raises(ValueError, match="at most 127"):
        codec.chunk_batch(128, on("cuda", causal=False, channels=64), 10, 0.5)
    with pytest.raises(ValueError, match="tokenize.chunk_seconds"):
        codec.chunk_batch("auto", on("cuda"), 3000, 0)


@pytest.mark.parametrize("name", ["encodec_24khz", "encodec_32khz", "dac_44khz"])
def test_latents_are_the_frames_the_codes_quantize_and_decode_to_audio(name, codec_manifests):
    codes, latents = (load_codec(codec_manifests[name], latents=latents)
                      for latents in (False, True))
    audio = music(1.3, codes.sample_rate)
    frames = encode(latents, [audio], codes.sample_rate, chunk_seconds=10.0)[0]
    assert frames.dtype == np.float16 and frames.shape[0] == latents.dimension
    assert frames.shape[1] == encode(codes, [audio], codes.sample_rate, 10.0)[0].shape[1]
    with torch.inference_mode():  # the codes are those of the frames, quantized
        wave = torch.from_numpy(audio).float()[None, None]
        torch.testing.assert_close(codes.quantize(latents.encode(wave)), codes.encode(wave))
    played = decode(latents, frames)
    assert played.shape == (frames.shape[1] * latents.hop,) and np.isfinite(played).all()
