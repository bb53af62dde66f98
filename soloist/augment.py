"""The augment stage: pitch and tempo variants of separated tracks.

A variant shifts a track's context and target by the same ``semitones`` and plays both at the
same ``tempo``, so the solo stays in tune and in time with its backing. From here on it is a
track of its own (``tracks.variant_name``: ``song~p+2t0.90``), clipped and tokenized like
the others. The rule gives only the tracks whose split gets variants (``augment.splits``),
and shard puts a variant in its original's split: no variant crosses splits.

One STFT makes both changes: a phase vocoder stretches time by pitch factor / tempo, then a
resampling by the pitch factor raises or lowers the pitch and brings the length to
N / tempo. All channels of a track (context and target, stereo) go through it at once, on
the GPU when there is one. Chosen by measuring pitch and tempo errors and speed against the
alternatives (BENCHMARKS.md, "Augmentation").
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction

import numpy as np
import torch
from tqdm import tqdm

from soloist import device as devices
from soloist.codec import resampler
from soloist.io import Background, Clock, io_pool, prefetch, read_audio, read_json, write_audio
from soloist.tracks import Batch, Track, attempt, fail, provenance, run_batch, variant_name

log = logging.getLogger("soloist.augment")
N_FFT, HOP = 2048, 512  # 46 ms windows at 44.1 kHz, 4x overlap


def shift(audio: torch.Tensor, semitones: float, tempo: float) -> torch.Tensor:
    """``audio`` [C, N] a pitch ``semitones`` higher, played at ``tempo`` (1.1: 10% faster):
    [C, round(N / tempo)] at the same sample rate."""
    # The pitch factor as a ratio of integers the resampler takes (within 0.01 cent)
    factor = Fraction(2 ** (semitones / 12)).limit_denominator(1000)
    n = audio.shape[-1]
    window = torch.hann_window(N_FFT, device=audio.device)
    spec = torch.stft(audio, N_FFT, HOP, window=window, return_complex=True)  # [C, F, frames]
    stretched = stretch(spec, tempo / float(factor))
    out = torch.istft(stretched, N_FFT, HOP, window=window,
                      length=round(n * float(factor) / tempo))
    if factor != 1:
        out = resampler(factor.numerator, factor.denominator, audio.device)(out)
    length = round(n / tempo)
    return torch.nn.functional.pad(out, (0, max(0, length - out.shape[-1])))[..., :length]


def stretch(spec: torch.Tensor, rate: float) -> torch.Tensor:
    """A phase vocoder with identity phase locking: spectrogram [C, F, T] (hop ``HOP``) read
    at ``rate`` input frames per output frame: [C, F, ceil(T / rate)].

    Each bin's phase advances by its own frequency (the plain phase vocoder, torchaudio's
    ``phase_vocoder``), and then every bin keeps the phase offset it has in the input from
    the loudest bin near it. Without that lock the bins of one partial drift apart: a steady
    tone came out 10 dB quieter (BENCHMARKS.md, "Augmentation").
    """
    steps = torch.arange(0, spec.shape[-1], rate, device=spec.device)
    now = steps.long()
    padded = torch.nn.functional.pad(spec, (0, 1))
    x0, x1 = padded[..., now], padded[..., now + 1]  # the frames each output frame lies between
    magnitude = torch.lerp(x0.abs(), x1.abs(), (steps - now).to(spec.real.dtype))
    advance = torch.linspace(0, math.pi * HOP, spec.shape[-2], device=spec.device)[:, None]
    # phase increments per hop, wrapped, summed in float64: a 10-minute track sums 50,000
    step = x1.angle() - x0.angle() - advance
    step = (step - 2 * math.pi * torch.round(step / (2 * math.pi)) + advance).double()
    step = torch.remainder(step, 2 * math.pi)
    phase = torch.cumsum(torch.cat([x0[..., :1].angle().double(), step[..., :-1]], -1), -1)
    phase = torch.remainder(phase, 2 * math.pi).to(spec.real.dtype)
    peak = _nearest_peak(magnitude)
    angle = x0.angle()
    locked = phase.gather(-2, peak) + angle - angle.gather(-2, peak)
    return torch.polar(magnitude, locked)


def _nearest_peak(magnitude: torch.Tensor) -> torch.Tensor:
    """For each bin of ``magnitude`` [C, F, T], the index of the nearest local maximum
    along F (the bin itself if it is one): int64 [C, F, T]."""
    F = magnitude.shape[-2]
    left = torch.nn.functional.pad(magnitude, (0, 0, 1, 0))[..., :-1, :]
    right = torch.nn.functional.pad(magnitude, (0, 0, 0, 1))[..., 1:, :]
    is_peak = (magnitude > left) & (magnitude >= right)
    bins = torch.arange(F, device=magnitude.device)[:, None].expand_as(magnitude)
    before = torch.where(is_peak, bins, -1).cummax(-2).values  # the last peak at or below
    after = torch.where(is_peak, bins, F).flip(-2).cummin(-2).values.flip(-2)  # first above
    after_nearer = (after - bins < bins - before) | (before < 0)
    return torch.where(after_nearer & (after < F), after, before).clamp(0, F - 1)


def augment_batch(separated: str | os.PathLike, record: str | os.PathLike, tracks: list[str],
                  settings: dict) -> list[dict]:
    """Variants of ``tracks`` (of the separate batch of record ``separated``; those that it
    failed get none) into the batch of ``record``, keeping those already made."""
    upstream = Batch.of("separate", separated)
    separated_ok = {t: p for t, p in upstream.tracks().items()
                    if t in tracks and read_json(upstream.files(t)["status"])["ok"]}
    variants, provenances = {}, {}
    for t, p in separated_ok.items():
        for v in settings["variants"]:
            name = variant_name(t, v["semitones"], v["tempo"])
            variants[name] = {"original": t, "semitones": v["semitones"], "tempo": v["tempo"]}
            provenances[name] = provenance("augment", v, p)
    return run_batch(Batch.of("augment", record), provenances,
                     lambda todo: augment_tracks(todo, variants, settings), upstream,
                     sources={name: v["original"] for name, v in variants.items()})


def augment_tracks(todo: list[Track], variants: dict[str, dict], settings: dict) -> None:
    """Make the variants ``todo`` (named in ``variants``): each original is read once, for
    all its variants, the next ones in threads while the device shifts."""
    clock, device = Clock(), devices.pick_device(settings["device"])
    by_original: dict[str, list[Track]] = {}
    for t in todo:
        by_original.setdefault(variants[t.name]["original"], []).append(t)
    reads = prefetch(lambda group: _read(group[0], device), by_original.values())
    bar = tqdm(total=len(todo), desc="augment", unit="variant", disable=len(todo) < 2)
    with Background() as writer:
        for group, audio, error in clock.iter("reading", reads):
            for t in group:
                if error is not None:
                    fail(t, error)
                else:
                    v = variants[t.name]
                    with clock("shifting"):
                        pcm = devices.pcm16(_shift(audio, v))
                    writer.submit(attempt, t,
                                  lambda t=t, v=v, pcm=pcm, a=audio: _write(t, v, pcm, a))
                bar.update()
        bar.close()
        with clock("waiting for writes"):
            writer.close()
    log.info("made %d variants of %d tracks in %s", len(todo), len(by_original), clock)


def _read(track: Track, device: torch.device) -> dict:
    """Both roles of a track's original, one tensor [C, N] on ``device``."""
    roles = [read_audio(track.inputs[role]) for role in ("context", "target")]
    rates = {rate for _, rate in roles}
    if len(rates) != 1 or len({a.shape[1] for a, _ in roles}) != 1:
        raise ValueError("the context and target differ in length or rate")
    samples = torch.from_numpy(np.concatenate([a for a, _ in roles])).to(device)
    return {"samples": samples, "channels": roles[0][0].shape[0], "rate": rates.pop()}


def _shift(audio: dict, variant: dict) -> torch.Tensor:
    try:
        return shift(audio["samples"], variant["semitones"], variant["tempo"])
    except torch.cuda.OutOfMemoryError as e:
        raise RuntimeError("the GPU ran out of memory shifting one track: set "
                           "augment.device: cpu for tracks this long") from e


def _write(track: Track, variant: dict, pcm: np.ndarray, audio: dict) -> dict:
    c = audio["channels"]
    files = [(track.out["context"], pcm[:c]), (track.out["target"], pcm[c:])]
    list(io_pool().map(lambda f: write_audio(f[0], f[1], audio["rate"]), files))
    return {"ok": True, "stage": "augment", "track": track.name, **variant,
            "duration": round(pcm.shape[1] / audio["rate"], 4)}
