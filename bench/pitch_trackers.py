"""Which pitch tracker hears the solo (soloist.fit): torchcrepe or librosa.pyin, measured.

A demo song's saxophone stem against its true notes (frames inside a note, past its scoop):
the share within 50 cents, how much of the notes is voiced, how much silence is voiced,
and the speed on this machine; clean, then with white noise at 10 dB SNR and the piano at
-6 dB under it, as a lossy round trip might leave it. pyin is timed after a first call, so
that numba's compile is left out.

    PYTHONPATH=. .venv/bin/python bench/pitch_trackers.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from soloist.io import read_audio
from soloist.synth import make_song

SECONDS = 30


def truth_midi(notes: list, times: np.ndarray) -> np.ndarray:
    midi = np.full(len(times), np.nan)
    for start, end, pitch in notes:
        midi[(times >= start + 0.05) & (times < end - 0.03)] = pitch
    return midi


def row(name: str, notes: list, times: np.ndarray, hz: np.ndarray, seconds: float
        ) -> tuple[str, float, float, float, float]:
    """(tracker, share within 50 cents, of the notes voiced, of the silence voiced, x
    realtime)."""
    import librosa

    ref, est = truth_midi(notes, times), librosa.hz_to_midi(np.where(hz > 0, hz, np.nan))
    both = ~np.isnan(ref) & ~np.isnan(est)
    silent = np.ones(len(times), bool)
    for start, end, _ in notes:
        silent[(times >= start - 0.03) & (times < end + 0.05)] = False
    return (name, float(np.mean(np.abs(est[both] - ref[both]) < 0.5)),
            both.sum() / (~np.isnan(ref)).sum(), (~np.isnan(est) & silent).sum() / silent.sum(),
            SECONDS / seconds)


def trackers(x: np.ndarray, sr: int, notes: list) -> list[tuple]:
    import librosa
    import torchcrepe

    y = librosa.resample(x, orig_sr=sr, target_sr=24000)
    librosa.pyin(y[:24000], fmin=100, fmax=1000, sr=24000, frame_length=1024, hop_length=240)
    t = time.perf_counter()
    f0, voiced, _ = librosa.pyin(y, fmin=100, fmax=1000, sr=24000, frame_length=1024,
                                 hop_length=240)
    rows = [row("librosa.pyin", notes, np.arange(len(f0)) * 0.01, np.where(voiced, f0, 0),
                time.perf_counter() - t)]
    y16 = torch.from_numpy(librosa.resample(x, orig_sr=sr, target_sr=16000)).float()[None]
    t = time.perf_counter()
    hz, periodicity = torchcrepe.predict(y16, 16000, 160, 100, 1000, "tiny", batch_size=512,
                                         device="cpu", return_periodicity=True)
    seconds = time.perf_counter() - t
    periodicity = torchcrepe.filter.median(periodicity, 3)[0].numpy()
    for threshold in (0.3, 0.5):
        rows.append(row(f"torchcrepe tiny > {threshold}", notes, np.arange(hz.shape[1]) * 0.01,
                        np.where(periodicity > threshold, hz[0].numpy(), 0), seconds))
    return rows


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        truth = make_song("pitch01", tmp, seconds=SECONDS, seed=0)
        sax, sr = read_audio(Path(tmp) / "stems/other.flac")
        piano, _ = read_audio(Path(tmp) / "stems/piano.flac")
    x = sax.mean(0)
    rms = np.sqrt(np.mean(x[np.abs(x) > 1e-4] ** 2))
    noisy = x + np.random.default_rng(0).normal(0, rms / 10 ** 0.5, len(x)) + 0.5 * piano.mean(0)
    print(f"{'tracker':<22}{'<50 cents':>10}{'voiced':>9}{'false':>9}{'x realtime':>11}")
    for label, audio in (("clean saxophone stem", x), ("noise at 10 dB + piano", noisy)):
        print(f"-- {label}")
        rows = trackers(audio, sr, truth["notes"])
        for name, within, voiced, false, speed in rows:
            print(f"{name:<22}{within:>10.4f}{voiced:>9.3f}{false:>9.3f}{speed:>11.1f}")
    pyin, crepe = rows[0], rows[2]
    print(f"ratio (noisy): frames within 50 cents, torchcrepe tiny / pyin = "
          f"{crepe[1] / pyin[1]:.3f}; speed, torchcrepe tiny / pyin = {crepe[4] / pyin[4]:.2f}")


if __name__ == "__main__":
    main()
