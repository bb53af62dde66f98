"""Separation throughput: our separate stage vs demucs' apply_model with its CLI defaults.

Both run the same random-init htdemucs_6s-shaped model (same compute as pretrained) on the
same synthetic songs of different lengths, on the GPU when there is one. Ours is timed end
to end on an ingest batch folder (model load, FLAC read, separation, FLAC write), with the
settings of config.yaml's ``separate`` section; apply_model is timed on tensors already in
memory (the library's compute path only, what the demucs CLI does between reading and
writing files). SDR compares our written context/target with the same role mixes of
apply_model's fp32 output with our own settings (shifts=0): with random weights the model
is far from shift-equivariant, so a different shift alone (ours 0, the CLI's random one)
would give an SDR near 0 dB and say nothing about our numerics. A compiled variant runs
twice: the first run compiles, the second reuses the compiled code as every batch after a
long job's first does (model load and I/O included in both).

    PYTHONPATH=. python3 bench/separate_gpu.py [--seconds 240 180 120 90 60 30] \
        [--variants bf16 fp32 bf16-compiled] [--batch auto 32]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from soloist.fetch_weights import fetch_weights
from soloist.io import io_pool, io_workers, read_audio, write_audio, write_json
from soloist.separate import PIECE_SECONDS, mix_roles, separate_batch
from soloist.synth import make_song
from soloist.tracks import Batch
from soloist.weights import load_demucs

ROOT = Path(__file__).resolve().parent.parent
RATE = 44100


def make_ingest_batch(folder: Path, seconds: list[float]) -> dict[str, np.ndarray]:
    """An ingest batch (``folder`` and its record ``folder.json``) of demo mixtures of these
    lengths; returns {track: [2, N]}.

    Songs longer than 60 s repeat a 60 s song: synthesis costs CPU time, Demucs does not care.
    """
    mixes = {}
    for i, s in enumerate(seconds):
        track = f"t{i:02d}_{s:g}s"
        song = folder / "songs" / track
        make_song(track, song, seconds=min(s, 60.0), seed=i)
        audio, _ = read_audio(song / "mixture.flac")
        n = round(s * RATE)
        audio = np.tile(audio, (1, -(-n // audio.shape[1])))[:, :n]
        write_audio(folder / "audio" / f"{track}.flac", audio, RATE)
        write_json(folder / "info" / f"{track}.json",
                   {"ok": True, "stage": "ingest", "track": track, "kind": "file",
                    "source": str(song / "mixture.flac"), "sample_rate": RATE,
                    "provenance": track})
        # what separate reads back: the 16-bit file, not the float we wrote
        mixes[track] = read_audio(folder / "audio" / f"{track}.flac")[0]
    Batch.of("ingest", f"{folder}.json").write_record({t: t for t in mixes})
    return mixes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def apply_model_path(model: torch.nn.Module, mixes: dict[str, np.ndarray], shifts: int,
                     overlap: float, device: torch.device) -> tuple[float, dict]:
    """Wall seconds and {track: stems [S, C, N]} of apply_model on each whole track."""
    from demucs.apply import apply_model

    outs = {}
    sync(device)
    start = time.perf_counter()
    for track, audio in mixes.items():
        mix = torch.from_numpy(audio)
        ref = mix.mean(0)  # the CLI normalises by the mono mix's mean and std, then undoes it
        mean, std = ref.mean(), ref.std()
        random.seed(track)  # the shift offsets come from `random`: same draw as our stage
        out = apply_model(model, ((mix - mean) / std)[None], shifts=shifts, overlap=overlap,
                          split=True, device=device)[0]
        outs[track] = (out * std + mean).numpy()
    sync(device)
    return time.perf_counter() - start, outs


@torch.inference_mode()
def forward_alone(model: torch.nn.Module, mixes: dict[str, np.ndarray], settings: dict,
                  precision: str, device: torch.device) -> float:
    """Wall seconds of the forward passes alone that our stage makes for ``mixes``, in
    batches of 16 segments of random input: the GPU's ceiling for the stage."""
    inner = model.models[0]
    seg = int(inner.samplerate * (settings["segment"] or float(inner.segment)))
    stride = int((1 - settings["overlap"]) * seg)
    window = inner.valid_length(seg)
    n = sum(-(-a.shape[1] // stride) for a in mixes.values())
    x = torch.randn(16, 2, window, device=device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
    with autocast:
        inner(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(-(-n // 16)):
            inner(x)
        sync(device)
    return time.perf_counter() - start


def role_sdr(ours: Path, ref: dict[str, np.ndarray], sources: list[str], settings: dict
             ) -> tuple[float, float]:
    """SDR (dB) of our context and target files vs the reference stems mixed the same way.

    Energies are summed over all tracks. The reference is clipped to [-1, 1] like our
    16-bit files: clipping is the file format, not an error of the separation.
    """
    num, den = np.zeros(2), np.zeros(2)
    for track, stems in ref.items():
        mixed = mix_roles(dict(zip(sources, stems, strict=True)), settings["context"],
                          settings["target"])
        for i, (role, r) in enumerate(zip(("context", "target"), mixed, strict=True)):
            r = np.clip(r, -1, 1)
            est = read_audio(ours / track / f"{role}.flac")[0]
            num[i] += np.sum(r.astype(np.float64) ** 2)
            den[i] += np.sum((r.astype(np.float64) - est) ** 2)
    sdr = 10 * np.log10(num / np.maximum(den, 1e-20))
    return float(sdr[0]), float(sdr[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[240, 180, 120, 90, 60, 30],
                    help="track lengths (default: 12 audio-minutes)")
    ap.add_argument("--variants", nargs="+", default=["bf16", "fp32", "bf16-compiled"],
                    help="our precision settings, -compiled: with separate.compile")
    ap.add_argument("--batch", nargs="+", default=["auto"], help="our batch_size settings")
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    args = ap.parse_args()
    logging.getLogger("soloist").setLevel(logging.ERROR)  # the header says random-init once
    stage_log = logging.getLogger("soloist.separate")  # its line of where the time went
    stage_log.setLevel(logging.INFO)
    stage_log.addHandler(logging.StreamHandler(sys.stdout))
    precisions = list(dict.fromkeys(v.removesuffix("-compiled") for v in args.variants))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = {**yaml.safe_load(args.config.read_text())["separate"], "device": str(device)}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, weights: random-init "
          f"{settings['model']}, ours: shifts={settings['shifts']} "
          f"overlap={settings['overlap']} segment={settings['segment']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-separate-") as tmp:
        tmp = Path(tmp)
        manifest = tmp / "weights" / "demucs" / f"{settings['model']}.json"
        fetch_weights("demucs", settings["model"], "random", manifest)
        mixes = make_ingest_batch(tmp / "ingest", args.seconds)
        audio_s = sum(a.shape[1] for a in mixes.values()) / RATE
        model = load_demucs(manifest).to(device)
        if device.type == "cuda":  # CUDA context, cuDNN and allocator warm-up, untimed
            shortest = min(mixes, key=lambda t: mixes[t].shape[1])
            apply_model_path(model, {shortest: mixes[shortest]}, 0, 0.25, device)
            separate_batch(tmp / "ingest.json", tmp / "warm.json", settings, {}, manifest, RATE)

        print(f"{len(mixes)} tracks, {audio_s:.0f} audio-s; SDR columns: our output vs "
              f"apply_model's fp32 output with our settings (shifts={settings['shifts']})")
        print(f"{'path':<40}{'audio s':>9}{'wall s':>9}{'x realtime':>12}"
              f"{'SDR ctx dB':>12}{'SDR tgt dB':>12}", flush=True)
        # the CLI defaults, then our settings; both fp32 (its default)
        cli_s, _ = apply_model_path(model, mixes, 1, 0.25, device)
        print(f"{'apply_model CLI (shifts=1)':<40}{audio_s:>9.0f}{cli_s:>9.2f}"
              f"{audio_s / cli_s:>12.1f}{'-':>12}{'-':>12}", flush=True)
        same_s, ref = apply_model_path(model, mixes, settings["shifts"], settings["overlap"],
                                       device)
        label = f"apply_model (shifts={settings['shifts']})"
        print(f"{label:<40}{audio_s:>9.0f}{same_s:>9.2f}{audio_s / same_s:>12.1f}"
              f"{'-':>12}{'-':>12}", flush=True)
        # what the parts of our stage cost alone: loading the model, reading, writing
        start = time.perf_counter()
        load_demucs(manifest, device)
        sync(device)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        audio = [read_audio(tmp / "ingest" / "audio" / f"{t}.flac", PIECE_SECONDS)[0]
                 for t in mixes]
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        list(io_pool().map(lambda a: write_audio(tmp / f"w{a[0]}.flac", a[1], RATE),
                           list(enumerate(audio + audio))))
        write_s = time.perf_counter() - start
        forward = {p: forward_alone(model, mixes, settings, p, device) for p in precisions}
        for label, seconds in (("  model load", load_s),
                               *((f"  model forward alone, {p}, batch 16", t)
                                 for p, t in forward.items()),
                               (f"  FLAC read alone ({io_workers()} threads)", read_s),
                               (f"  FLAC write alone, 2 roles ({io_workers()} threads)", write_s)):
            print(f"{label:<40}{audio_s:>9.0f}{seconds:>9.2f}{audio_s / seconds:>12.1f}"
                  f"{'-':>12}{'-':>12}", flush=True)
        best = compiled_best = 0.0
        for name in args.variants:
            for batch in args.batch:
                precision, compiled = name.removesuffix("-compiled"), name.endswith("-compiled")
                variant = {**settings, "precision": precision, "compile": compiled,
                           "batch_size": batch if batch == "auto" else int(batch)}
                # a compiled variant runs again: its compile is reused in the process, as it
                # is by every batch after a long job's first
                for again in (False, True) if compiled else (False,):
                    out = tmp / f"ours-{name}-{batch}-{again}"  # a batch: nothing done yet
                    sync(device)
                    start = time.perf_counter()
                    statuses = separate_batch(tmp / "ingest.json", f"{out}.json", variant,
                                              {}, manifest, RATE)
                    sync(device)
                    ours_s = time.perf_counter() - start
                    if not all(s["ok"] for s in statuses):
                        raise RuntimeError(f"our stage failed: "
                                           f"{[s for s in statuses if not s['ok']]}")
                    ctx, tgt = role_sdr(out, ref, list(model.sources), settings)
                    label = ("  again, compile reused (I/O incl.)" if again else
                             f"ours {precision} batch {batch}{' compiled' * compiled} (I/O incl.)")
                    print(f"{label:<40}{audio_s:>9.0f}{ours_s:>9.2f}{audio_s / ours_s:>12.1f}"
                          f"{ctx:>12.1f}{tgt:>12.1f}", flush=True)
                    if min(ctx, tgt) >= 30:
                        if again:
                            compiled_best = max(compiled_best, audio_s / ours_s)
                        else:
                            best = max(best, audio_s / ours_s)
    cli = audio_s / cli_s
    print(f"ratio: ours (best with SDR >= 30 dB) / apply_model CLI defaults = {best / cli:.2f}x; "
          f"compiled, once compiled {compiled_best / cli:.2f}x (target >= 4x)")

if __name__ == "__main__":
    main()
