"""Tokenization throughput: our tokenize stage vs EncodecModel.encode once per whole track.

Both run the same random-init EnCodec 24 kHz (codebooks initialised as in fetch_weights;
``load_encodec`` builds encodec's own model unchanged, weight_norm and all) on the same
synthetic context/target tracks of different lengths, on the GPU when there is one. Ours
is timed end to end on a separate batch folder (model load, FLAC read, resampling, chunked
batched encoding, .npy write) with config.yaml's ``tokenize`` settings; the per-track
path is timed on 24 kHz mono tensors already in memory, read and resampled
exactly as our stage does (encode only, host-to-device copy included). Both roles count
as audio. Codes are compared frame by frame with the per-track fp32 path. A last row times
a longer job, the same tracks ``--repeat`` times under other names (32: 6.4 hours of music, the job
size of a 50-hour corpus in config.yaml's 8 batches).

    PYTHONPATH=. python3 bench/tokenize_gpu.py [--seconds 240 180 120 90 60 30] [--batch auto 128]
                                               [--repeat 32]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
import yaml

from soloist.fetch_weights import fetch_weights
from soloist.io import (
    io_workers,
    prefetch,
    read_audio,
    read_npy,
    read_pcm16,
    write_audio,
    write_json,
)
from soloist.synth import make_song
from soloist.tokenize import PIECE_SECONDS, tokenize_batch
from soloist.tracks import Batch
from soloist.weights import load_encodec

ROOT = Path(__file__).resolve().parent.parent
RATE = 44100
ROLES = ("context", "target")
EQUIVALENT = 1e-3


def make_separate_batch(folder: Path, songs: Path, seconds: list[float]) -> list[str]:
    """A separate batch (``folder`` and its record ``folder.json``): demo backing
    (drums+bass+piano) and solo (sax) per track.

    The demo songs go to ``songs``: every folder in ``folder`` is taken for a track.

    Songs longer than 60 s repeat a 60 s song: synthesis costs CPU time, EnCodec does not care.
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
def per_track_path(model: torch.nn.Module, audio: dict[tuple[str, str], torch.Tensor],
                   device: torch.device) -> tuple[float, dict[tuple[str, str], np.ndarray]]:
    """Wall seconds and codes [K, T] of one EncodecModel.encode call per (track, role)."""
    codes = {}
    sync(device)
    start = time.perf_counter()
    for key, x in audio.items():
        frames = model.encode(x.to(device)[None, None])  # one frame: 24 kHz has no segment
        codes[key] = torch.cat([f[0] for f in frames], dim=-1)[0].cpu().numpy()
    sync(device)
    return time.perf_counter() - start, codes


def agreement(model: torch.nn.Module, ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Counts of (identical codes, equivalent codes) between two [K, T] code arrays.

    Equivalent: the two codebook vectors are within EQUIVALENT times the median vector norm
    of the first codebook of each other.

    The random-init codebooks are sampled from encoder outputs that include digital silence,
    so some entries are near-copies, and silence then lands on near-ties whose index flips
    with float rounding (batched vs unbatched kernels) without changing what is encoded.
    """
    layers = model.quantizer.vq.layers[:ours.shape[0]]
    # the latent's scale: later codebooks of the random init are mostly near-zero vectors
    scale = layers[0]._codebook.embed.norm(dim=-1).median().item()
    counts = np.zeros(2)
    for k, layer in enumerate(layers):
        embed = layer._codebook.embed.cpu()
        a, b = embed[torch.from_numpy(ours[k])], embed[torch.from_numpy(ref[k])]
        close = (a - b).norm(dim=-1) <= EQUIVALENT * scale
        counts += [int((ours[k] == ref[k]).sum()), int(close.sum())]
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[240, 180, 120, 90, 60, 30],
                    help="track lengths, each with a context and a target (default: 12 min)")
    ap.add_argument("--batch", nargs="+", default=["auto"], help="our batch_size settings")
    ap.add_argument("--warmup", type=float, nargs="+", default=None,
                    help="our warmup_seconds settings (default: config.yaml's)")
    ap.add_argument("--repeat", type=int, default=32,
                    help="copies of the tracks in the longer job's row (0: no such row)")
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    args = ap.parse_args()
    logging.getLogger("soloist").setLevel(logging.ERROR)  # the header says random-init once
    stage_log = logging.getLogger("soloist.tokenize")  # its line of where the time went
    stage_log.setLevel(logging.INFO)
    stage_log.addHandler(logging.StreamHandler(sys.stdout))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = {**yaml.safe_load(args.config.read_text())["tokenize"], "device": str(device)}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, weights: random-init "
          f"{settings['model']}, ours: bandwidth={settings['bandwidth']} "
          f"chunk_seconds={settings['chunk_seconds']} warmup_seconds={settings['warmup_seconds']} "
          f"batch_size={settings['batch_size']}",
          flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tmp = Path(tmp)
        manifest = tmp / "weights" / "encodec" / f"{settings['model']}.json"
        fetch_weights("encodec", settings["model"], "random", manifest)
        tracks = make_separate_batch(tmp / "separated", tmp / "songs", args.seconds)
        model = load_encodec(manifest, settings["bandwidth"]).to(device)
        # the per-track path's input: read and resampled exactly like our stage does
        audio = {}
        for t in tracks:
            for role in ROLES:
                a, rate = read_audio(tmp / "separated" / t / f"{role}.flac")
                audio[t, role] = AF.resample(torch.from_numpy(a.mean(0)), rate,
                                             model.sample_rate)
        audio_s = sum(x.numel() for x in audio.values()) / model.sample_rate
        if device.type == "cuda":  # CUDA context, cuDNN and allocator warm-up, untimed
            tokenize_batch(tmp / "separated.json", tmp / "warm.json", manifest, settings, {})
            per_track_path(model, {k: x[:30 * model.sample_rate] for k, x in audio.items()},
                           device)

        ref_s, ref_codes = per_track_path(model, audio, device)
        start = time.perf_counter()
        load_encodec(manifest, settings["bandwidth"], device)
        sync(device)
        load_s = time.perf_counter() - start
        start = time.perf_counter()  # what reading alone costs, in our stage's threads
        list(prefetch(lambda t: read_pcm16([tmp / "separated" / t / f"{r}.flac" for r in ROLES],
                                           PIECE_SECONDS), tracks))
        read_s = time.perf_counter() - start
        print(f"{len(tracks)} tracks x 2 roles, {audio_s:.0f} audio-s; ours vs the per-track "
              f"fp32 path, all codebooks: codes identical, and codes whose codebook vectors are "
              f"within {EQUIVALENT:g} of a typical latent (random codebooks hold near-copies)")
        print(f"{'path':<44}{'audio s':>9}{'wall s':>9}{'x realtime':>12}{'identical':>11}"
              f"{'equivalent':>12}")
        print(f"{'EncodecModel.encode per track':<44}{audio_s:>9.0f}{ref_s:>9.2f}"
              f"{audio_s / ref_s:>12.1f}{'-':>11}{'-':>12}")
        print(f"{'  model load':<44}{audio_s:>9.0f}{load_s:>9.2f}"
              f"{audio_s / load_s:>12.1f}{'-':>11}{'-':>12}")
        print(f"{f'  FLAC read alone ({io_workers()} threads)':<44}{audio_s:>9.0f}{read_s:>9.2f}"
              f"{audio_s / read_s:>12.1f}{'-':>11}{'-':>12}", flush=True)
        best = 0.0
        for batch, warmup in itertools.product(args.batch,
                                               args.warmup or [settings["warmup_seconds"]]):
            variant = {**settings, "batch_size": batch if batch == "auto" else int(batch),
                       "warmup_seconds": warmup}
            out = tmp / f"ours-{batch}-{warmup}"
            sync(device)
            start = time.perf_counter()
            statuses = tokenize_batch(tmp / "separated.json", f"{out}.json", manifest, variant, {})
            sync(device)
            ours_s = time.perf_counter() - start
            if not all(s["ok"] for s in statuses):
                raise RuntimeError(f"our stage failed: {[s for s in statuses if not s['ok']]}")
            same, total, shapes_differ = np.zeros(2), 0, []
            for (t, role), ref in ref_codes.items():
                ours = read_npy(out / t / f"{role}.npy").astype(np.int64)
                if ours.shape != ref.shape:
                    shapes_differ.append(f"{t}/{role} {ours.shape} vs {ref.shape}")
                n = min(ours.shape[1], ref.shape[1])
                same += agreement(model, ours[:, :n], ref[:, :n])
                total += ref.shape[0] * n
            label = f"ours batch {batch} warm-up {warmup:g} s (I/O incl.)"
            print(f"{label:<44}{audio_s:>9.0f}{ours_s:>9.2f}{audio_s / ours_s:>12.1f}"
                  f"{100 * same[0] / total:>10.2f}%{100 * same[1] / total:>11.2f}%", flush=True)
            if shapes_differ:
                print("frame counts differ (compared over the shorter): "
                      + ", ".join(shapes_differ))
            best = max(best, audio_s / ours_s)
        long = 0.0
        if args.repeat:
            folder = link_copies(tmp / "separated", tracks, args.repeat)
            sync(device)
            start = time.perf_counter()
            statuses = tokenize_batch(f"{folder}.json", tmp / "ours-long.json", manifest,
                                      settings, {})
            sync(device)
            long_s = time.perf_counter() - start
            if not all(s["ok"] for s in statuses):
                raise RuntimeError(f"our stage failed: {[s for s in statuses if not s['ok']]}")
            long = args.repeat * audio_s / long_s
            label = f"ours, the tracks x{args.repeat} in one job (I/O incl.)"
            print(f"{label:<44}{args.repeat * audio_s:>9.0f}{long_s:>9.2f}{long:>12.1f}"
                  f"{'-':>11}{'-':>12}", flush=True)
    ref = audio_s / ref_s
    print(f"ratio: ours (best) / per-track encode = {best / ref:.2f}x, {best:.0f}x realtime; "
          f"a job x{args.repeat} {long / ref:.2f}x, {long:.0f}x realtime "
          f"(target >= 10x and >= 5000x realtime)")


if __name__ == "__main__":
    main()
