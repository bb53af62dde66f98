"""Pitch and tempo variants: which method keeps pitch, level and time, and how fast.

For each method that is installed: the pitch error of a 440 Hz tone shifted by +2 semitones
(cents), its level change (dB; a plain phase vocoder lets a partial's bins drift apart),
the tempo error of a 120 bpm click track played at 0.9x and its clicks' jitter (ms), and the
throughput of +2 semitones at 0.9x tempo on a track's four channels (context and target,
stereo; 60 s of music) on the CPU and, when there is one, the GPU.

Methods (soloist uses the first):
- ours: a phase vocoder with identity phase locking, then a resampling (soloist.augment)
- torchaudio phase_vocoder: the same, without the lock (torchaudio.functional.phase_vocoder)
- torchaudio pitch_shift + TimeStretch: torchaudio's own functions, one after the other
- torch-pitch-shift + torch-time-stretch (MIT; `pip install torch-pitch-shift
  torch-time-stretch`), one after the other
- librosa pitch_shift + time_stretch (ISC, CPU only; `pip install librosa`)
- resampling alone (varispeed): pitch and tempo change together, so it cannot make an
  independent change; its row shows what that costs
Rubber Band (pyrubberband, pedalboard) is GPL and not considered.

    PYTHONPATH=. python3 bench/augment.py [--seconds 60] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

from soloist.augment import HOP, N_FFT, shift
from soloist.codec import resampler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from measure import click_track, clicks, pitch  # noqa: E402  (the tests' own measure)

SR = 44100
SEMITONES, TEMPO = 2, 0.9
Method = Callable[[torch.Tensor, float, float], torch.Tensor]  # (audio [C, N], st, tempo)


def plain_vocoder(audio: torch.Tensor, semitones: float, tempo: float) -> torch.Tensor:
    factor = Fraction(2 ** (semitones / 12)).limit_denominator(1000)
    window = torch.hann_window(N_FFT, device=audio.device)
    spec = torch.stft(audio, N_FFT, HOP, window=window, return_complex=True)
    advance = torch.linspace(0, math.pi * HOP, spec.shape[-2], device=audio.device)[:, None]
    stretched = AF.phase_vocoder(spec, tempo / float(factor), advance)
    out = torch.istft(stretched, N_FFT, HOP, window=window)
    return resampler(factor.numerator, factor.denominator, audio.device)(out)


def torchaudio_functions(audio: torch.Tensor, semitones: float, tempo: float) -> torch.Tensor:
    shifted = AF.pitch_shift(audio, SR, round(semitones), n_fft=N_FFT, hop_length=HOP)
    stretch = T.TimeStretch(HOP, N_FFT // 2 + 1, fixed_rate=tempo).to(audio.device)
    window = torch.hann_window(N_FFT, device=audio.device)
    spec = torch.stft(shifted, N_FFT, HOP, window=window, return_complex=True)
    return torch.istft(stretch(spec), N_FFT, HOP, window=window)


def torch_pitch_shift(audio: torch.Tensor, semitones: float, tempo: float) -> torch.Tensor:
    from torch_pitch_shift import pitch_shift, semitones_to_ratio
    from torch_time_stretch import time_stretch

    x = pitch_shift(audio[None], semitones_to_ratio(semitones), SR)
    return time_stretch(x, Fraction(1 / tempo).limit_denominator(100), SR)[0]  # a length factor


def librosa_effects(audio: torch.Tensor, semitones: float, tempo: float) -> torch.Tensor:
    import librosa

    x = audio.cpu().numpy()
    x = librosa.effects.pitch_shift(x, sr=SR, n_steps=semitones, n_fft=N_FFT, hop_length=HOP)
    x = librosa.effects.time_stretch(x, rate=tempo, n_fft=N_FFT, hop_length=HOP)
    return torch.from_numpy(x)


def varispeed(audio: torch.Tensor, semitones: float, tempo: float) -> torch.Tensor:
    factor = Fraction(2 ** (semitones / 12)).limit_denominator(1000)
    return resampler(factor.numerator, factor.denominator, audio.device)(audio)


METHODS: dict[str, tuple[Method, bool]] = {  # name -> (method, runs on a GPU)
    "ours: locked phase vocoder + resample": (shift, True),
    "torchaudio phase_vocoder + resample": (plain_vocoder, True),
    "torchaudio pitch_shift + TimeStretch": (torchaudio_functions, True),
    "torch-pitch-shift + torch-time-stretch": (torch_pitch_shift, True),
    "librosa pitch_shift + time_stretch": (librosa_effects, False),
    "resampling alone (varispeed)": (varispeed, True),
}


def accuracy(method: Method) -> tuple[float, float, float, float]:
    """(pitch error in cents, level change in dB, tempo error in %, click jitter in ms)."""
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * torch.arange(5 * SR) / SR)
    shifted = method(tone[None], SEMITONES, 1.0)[0].numpy()
    cents = 1200 * math.log2(pitch(shifted, SR) / (440 * 2 ** (SEMITONES / 12)))
    level = 10 * math.log10(np.mean(shifted[SR:-SR] ** 2) / float(tone.pow(2).mean()))
    track = torch.from_numpy(click_track(10, SR))
    period, jitter = clicks(method(track[None], 0, TEMPO)[0].numpy(), SR, 0.5 / TEMPO)
    return cents, level, 100 * (0.5 / period / TEMPO - 1), jitter


def throughput(method: Method, device: torch.device, seconds: float) -> float:
    """Audio-seconds (of each channel) per wall second, 4 channels at once."""
    audio = 0.1 * torch.randn(4, round(seconds * SR), generator=torch.Generator().manual_seed(0))
    audio = audio.to(device)
    # warm-up: kernels, filters, caches; on a GPU at the timed length, whose first call also
    # makes its FFT plans and picks its kernels (0.19 s against 0.01 s for ours on an H200)
    method(audio if device.type == "cuda" else audio[:, :SR], SEMITONES, TEMPO)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    method(audio, SEMITONES, TEMPO)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seconds / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    args = ap.parse_args()
    devices = [torch.device(d) for d in args.devices
               if d != "cuda" or torch.cuda.is_available()]
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"{name}, CPU threads {torch.get_num_threads()}, torch {torch.__version__}; "
          f"+{SEMITONES} semitones, tempo {TEMPO}; throughput on 4 x {args.seconds:g} s")
    head = "".join(f"{f'x realtime {d.type}':>16}" for d in devices)
    print(f"{'method':<40}{'cents':>8}{'level dB':>10}{'tempo %':>9}{'jitter ms':>11}{head}")
    speeds = {}
    for label, (method, gpu) in METHODS.items():
        try:
            cents, level, tempo, jitter = accuracy(method)
        except ImportError as e:
            print(f"{label:<40}  not installed ({e.name})")
            continue
        row = f"{label:<40}{cents:>8.2f}{level:>10.2f}{tempo:>9.3f}{jitter:>11.1f}"
        for d in devices:
            speed = throughput(method, d, args.seconds) if gpu or d.type == "cpu" else None
            speeds[label, d.type] = speed
            row += f"{speed:>16.1f}" if speed else f"{'-':>16}"
        print(row, flush=True)
    ours, library = "ours: locked phase vocoder + resample", "torchaudio pitch_shift + TimeStretch"
    for d in devices:
        print(f"ratio ({d.type}): ours / {library} = "
              f"{speeds[ours, d.type] / speeds[library, d.type]:.2f}x")


if __name__ == "__main__":
    main()
