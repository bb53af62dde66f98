"""Tokenization throughput, per codec: our tokenize stage vs the library's encode per track.

For each codec (``--codecs``), both run the same random-init transformers model (codebooks
initialised as in fetch_weights, the Hub's layout) on the same synthetic context/target
tracks of different lengths, on the GPU when there is one. Ours is timed end to end on a
separate batch folder (model load, FLAC read, resampling, chunked batched encoding, .npy
write) with config.yaml's ``tokenize`` settings; the per-track path (``EncodecModel.encode``
or ``DacModel.encode`` of a whole track) is timed on mono tensors at the codec's rate
already in memory, read and resampled exactly as our stage does (encode only,
host-to-device copy included). Both roles count as audio. Codes are compared frame by
frame with the per-track fp32 path (all codebooks, and the first alone), for our stage
encoding in fp32 and in bf16 (``--precision``; its nearest codes stay fp32). A row per codec
and precision times a longer job, the same tracks ``--repeat`` times under other names (3:
72 audio-minutes). A last row times the augment
stage on the same batch: two variants (+2 semitones; -1 semitone at 0.9x) of every track.

    PYTHONPATH=. python3 bench/tokenize_gpu.py [--seconds 240 180 120 90 60 30] [--batch auto 128]
                                               [--repeat 3] [--codecs encodec_24khz dac_44khz]
                                               [--precision fp32 bf16] [--compile]
                                               [--chunk-seconds 30]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
import yaml

from soloist.augment import augment_batch
from soloist.codec import Codec
from soloist.fetch_weights import fetch_weights
from soloist.io import read_audio, read_npy, write_audio, write_json
from soloist.synth import make_song
from soloist.tokenize import tokenize_batch
from soloist.tracks import Batch
from soloist.weights import CODECS, load_codec

ROOT = Path(__file__).resolve().parent.parent
RATE = 44100
ROLES = ("context", "target")


def make_separate_batch(folder: Path, songs: Path, seconds: list[float]) -> list[str]:
    """A separate batch (``folder`` and its record ``folder.json``): demo backing
    (drums+bass+piano) and solo (sax) per track.

    The demo songs go to ``songs``: every folder in ``folder`` is taken for a track.

    Songs longer than 60 s repeat a 60 s song: synthesis costs CPU time, a codec does not care.
    """
    tracks = []
    for i, s in enumerate(seconds):
        track = f"t{i:02d}_{s:g}s"
        song = songs / track
        make_song(track, song, seconds=min(s, 60.0), seed=i)
        stems = {p.stem: read_audio(p)[0] for p in (song / "stems").glob("*.flac")}
        n = round(s * RATE)
        roles = {"context": stems["drums"] + stems["bass"] + stems["piano"],
                 "target": stems["other"]}
        for role, audio in roles.items():
            audio = np.tile(audio, (1, -(-n // audio.shape[1])))[:, :n]
            write_audio(folder / track / f"{role}.flac", audio, RATE)
        write_json(folder / track / "separate.json",
                   {"ok": True, "stage": "separate", "track": track, "weights": "random",
                    "provenance": track})
        tracks.append(track)
    Batch.of("separate", f"{folder}.json").write_record({t: t for t in tracks})
    return tracks


def link_copies(folder: Path, tracks: list[str], times: int) -> Path:
    """A separate batch folder of ``times`` hard-linked copies of each track of ``folder``."""
    out = folder.with_name(f"{folder.name}-x{times}")
    for t, k in itertools.product(tracks, range(times)):
        (out / f"{t}_{k}").mkdir(parents=True)
        for f in (folder / t).iterdir():
            (out / f"{t}_{k}" / f.name).hardlink_to(f)
    Batch.of("separate", f"{out}.json").write_record(
        {f"{t}_{k}": t for t, k in itertools.product(tracks, range(times))})
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def per_track_path(codec: Codec, audio: dict[tuple[str, str], torch.Tensor],
                   device: torch.device) -> tuple[float, dict[tuple[str, str], np.ndarray]]:
    """Wall seconds and codes [K, T] of one library encode call per (track, role)."""
    codes, model = {}, codec.model
    sync(device)
    start = time.perf_counter()
    for key, x in audio.items():
        x = x.to(device)[None, None]
        if codec.config.model_type == "dac":
            out = model.encode(x, n_quantizers=codec.codebooks).audio_codes[0]
        else:  # one chunk: these configs have no chunk_length
            bandwidth = codec.codebooks * codec.frame_rate * math.log2(codec.cardinality) / 1000
            out = model.encode(x, bandwidth=bandwidth).audio_codes[0, 0]
        codes[key] = out.cpu().numpy()
    sync(device)
    return time.perf_counter() - start, codes


def timed(device: torch.device, fn: Callable[[], list[dict]]) -> float:
    """Wall seconds of a stage's batch call, which must leave every track ok."""
    if device.type == "cuda":  # as a fresh job finds it: batch_size auto reads what is free
        torch.cuda.empty_cache()
    sync(device)
    start = time.perf_counter()
    statuses = fn()
    sync(device)
    seconds = time.perf_counter() - start
    if not all(s["ok"] for s in statuses):
        raise RuntimeError(f"our stage failed: {[s for s in statuses if not s['ok']]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[240, 180, 120, 90, 60, 30],
                    help="track lengths, each with a context and a target (default: 12 min)")
    ap.add_argument("--batch", nargs="+", default=["auto"], help="our batch_size settings")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                    help="our precision settings (the per-track path is fp32)")
    ap.add_argument("--compile", action="store_true",
                    help="rows with the encoder torch.compiled too (tokenize.compile: true)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="copies of the tracks in the longer job's row (0: no such row)")
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    ap.add_argument("--chunk-seconds", type=float,
                    help="our tokenize.chunk_seconds (default: the config's)")
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    args = ap.parse_args()
    logging.getLogger("soloist").setLevel(logging.ERROR)  # the header says random-init once
    logging.getLogger("soloist.codec").setLevel(logging.WARNING)  # a compile that fails
    for stage in ("tokenize", "augment"):  # their line of where the time went
        stage_log = logging.getLogger(f"soloist.{stage}")
        stage_log.setLevel(logging.INFO)
        stage_log.addHandler(logging.StreamHandler(sys.stdout))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = yaml.safe_load(args.config.read_text())
    base = {**config["tokenize"], "device": str(device)}
    if args.chunk_seconds:
        base["chunk_seconds"] = args.chunk_seconds
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, weights: random-init, ours: "
          f"chunk_seconds={base['chunk_seconds']} warmup_seconds={base['warmup_seconds']} "
          f"batch_size={base['batch_size']}", flush=True)
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tmp = Path(tmp)
        tracks = make_separate_batch(tmp / "separated", tmp / "songs", args.seconds)
        for codec_name in args.codecs:
            ratios += bench_codec(tmp, tracks, codec_name, base, device, args)
        augment_row(tmp, tracks, config["augment"], device)
    for codec_name, precision, best, long in ratios:
        print(f"ratio {codec_name} {precision}: ours / per-track encode = {best:.2f}x, a job "
              f"of x{args.repeat} tracks {long:.2f}x (target >= 5x)")


Ratios = list[tuple[str, str, float, float]]


def bench_codec(tmp: Path, tracks: list[str], codec_name: str, base: dict,
                device: torch.device, args: argparse.Namespace) -> Ratios:
    """One codec's rows; per precision, (name, precision, best ratio of ours to the per-track
    path, the long job's)."""
    settings = {**base, "model": codec_name}
    manifest = tmp / "weights" / "codec" / f"{codec_name}.json"
    fetch_weights("codec", codec_name, "random", manifest)
    codec = load_codec(manifest, device=device)
    audio = {}  # the per-track path's input: read and resampled exactly like our stage does
    for t in tracks:
        for role in ROLES:
            a, rate = read_audio(tmp / "separated" / t / f"{role}.flac")
            audio[t, role] = AF.resample(torch.from_numpy(a.mean(0)), rate, codec.sample_rate)
    audio_s = sum(x.numel() for x in audio.values()) / codec.sample_rate
    if device.type == "cuda":  # CUDA context, cuDNN and allocator warm-up, untimed
        tokenize_batch({"separate": tmp / "separated.json"}, tmp / f"warm-{codec_name}.json",
                       manifest, settings, {})
        per_track_path(codec, {k: x[:30 * codec.sample_rate] for k, x in audio.items()}, device)
    ref_s, ref_codes = per_track_path(codec, audio, device)
    load_s = timed(device, lambda: [{"ok": bool(load_codec(manifest, device=device))}])
    print(f"\n{codec_name}: {len(tracks)} tracks x 2 roles, {audio_s:.0f} audio-s, "
          f"{codec.codebooks} codebooks of {codec.cardinality} at {codec.frame_rate:g} Hz; "
          "codes identical to the per-track fp32 path")
    print(f"{'path':<44}{'audio s':>9}{'wall s':>9}{'x realtime':>12}{'identical':>11}"
          f"{'k=1':>9}")
    print(f"{f'{type(codec.model).__name__}.encode per track':<44}{audio_s:>9.0f}{ref_s:>9.2f}"
          f"{audio_s / ref_s:>12.1f}{'-':>11}{'-':>9}")
    print(f"{'  model load':<44}{audio_s:>9.0f}{load_s:>9.2f}{audio_s / load_s:>12.1f}{'-':>11}"
          f"{'-':>9}")
    ratios = []
    for precision, compiled in itertools.product(args.precision, [False, True][:1 + args.compile]):
        label = f"{precision}{' compiled' if compiled else ''}"
        best = 0.0
        for batch in args.batch:
            variant = {**settings, "batch_size": batch if batch == "auto" else int(batch),
                       "precision": precision, "compile": compiled}
            out = tmp / f"ours-{codec_name}-{batch}-{precision}-{compiled}"
            ours_s = timed(device, lambda v=variant, o=out: tokenize_batch(
                {"separate": tmp / "separated.json"}, f"{o}.json", manifest, v, {}))
            same = agreement(out, ref_codes)
            print(f"{f'ours batch {batch} {label} (I/O incl.)':<41}{audio_s:>12.0f}"
                  f"{ours_s:>9.2f}{audio_s / ours_s:>12.1f}{same[0]:>10.2f}%{same[1]:>8.2f}%",
                  flush=True)
            best = max(best, audio_s / ours_s)
        long = 0.0
        if args.repeat:
            long = long_job(tmp, tracks, {**settings, "precision": precision, "compile": compiled},
                            manifest, audio_s, device, args.repeat)
        ratios.append((codec_name, label, best * ref_s / audio_s, long * ref_s / audio_s))
    if device.type == "cuda":
        print(f"peak GPU memory per batch row and input sample: {peak_bytes(codec, base):.0f} "
              f"bytes (batch_size auto assumes {CODECS[codec_name].peak_bytes})")
    return ratios


def agreement(out: Path, ref_codes: dict) -> tuple[float, float]:
    """% of our codes in ``out`` equal to the per-track path's: all codebooks, the first."""
    same = first = total = frames = 0
    for (t, role), ref in ref_codes.items():
        ours = read_npy(out / t / f"{role}.npy").astype(np.int64)
        n = min(ours.shape[1], ref.shape[1])
        equal = ours[:, :n] == ref[:, :n]
        same, first = same + int(equal.sum()), first + int(equal[0].sum())
        total, frames = total + ref.shape[0] * n, frames + n
    return 100 * same / total, 100 * first / frames


def long_job(tmp: Path, tracks: list[str], settings: dict, manifest: Path, audio_s: float,
             device: torch.device, repeat: int) -> float:
    """Times realtime of our stage on the tracks ``repeat`` times over, in one job."""
    folder = tmp / f"separated-x{repeat}"
    if not folder.exists():
        link_copies(tmp / "separated", tracks, repeat)
    label = f"{settings['precision']}{' compiled' if settings['compile'] else ''}"
    out = tmp / f"ours-long-{settings['model']}-{label.replace(' ', '-')}.json"
    long_s = timed(device, lambda: tokenize_batch({"separate": f"{folder}.json"}, out, manifest,
                                                  settings, {}))
    label = f"ours, the tracks x{repeat} in one job, {label}"
    print(f"{label:<44}{repeat * audio_s:>9.0f}{long_s:>9.2f}{repeat * audio_s / long_s:>12.1f}"
          f"{'-':>11}{'-':>9}", flush=True)
    return repeat * audio_s / long_s


@torch.inference_mode()
def peak_bytes(codec: Codec, settings: dict, rows: int = 16) -> float:
    """What one batch row of ``encode_stream``'s chunks adds to the peak, per input sample."""
    seconds = settings["chunk_seconds"] + settings["warmup_seconds"] * (1 if codec.causal else 2)
    x = torch.zeros(rows, 1, round(seconds * codec.sample_rate), device=codec.device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    codec.encode(x)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / x.numel()


def augment_row(tmp: Path, tracks: list[str], config: dict, device: torch.device) -> None:
    """The augment stage on the batch: two variants of every track, both roles (stereo)."""
    settings = {**config, "device": str(device),
                "variants": [{"semitones": 2, "tempo": 1.0}, {"semitones": -1, "tempo": 0.9}]}
    if device.type == "cuda":  # warm-up on the shortest track
        augment_batch(tmp / "separated.json", tmp / "warm-augment.json", tracks[-1:], settings)
    seconds = timed(device, lambda: augment_batch(tmp / "separated.json", tmp / "augment.json",
                                                  tracks, settings))
    made = sum(read_audio(tmp / "augment" / f"{t}~p+2t1.00" / "target.flac")[0].shape[1]
               for t in tracks) / RATE * (1 + 1 / 0.9) * 2  # both variants, both roles
    print(f"\n{'augment: 2 variants of each track (I/O incl.)':<44}{made:>9.0f}{seconds:>9.2f}"
          f"{made / seconds:>12.1f}{'-':>11}", flush=True)


if __name__ == "__main__":
    main()
