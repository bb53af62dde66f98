"""What a pitch or tempo change did to a test signal: shared by tests/test_augment.py and
bench/augment.py, so that the tests' tolerances and the benchmark's figures are one measure."""

from __future__ import annotations

import numpy as np


def pitch(x: np.ndarray, rate: int) -> float:
    """The frequency of a steady tone [N] in Hz (FFT peak, parabolic interpolation), away
    from its first and last half second."""
    x = np.asarray(x[rate // 2:-rate // 2], np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 8 * len(x)))
    k = int(spectrum.argmax())
    a, b, c = np.log(spectrum[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / (8 * len(x))


def clicks(x: np.ndarray, rate: int, period: float) -> tuple[float, float]:
    """(seconds between clicks, the clicks' largest distance from that grid in ms) of a click
    track [N] whose clicks come about every ``period`` s: a line through each click's loudest
    5 ms, each looked for a period after the one before (a track at another tempo is still
    followed click by click)."""
    energy = np.convolve(np.asarray(x, np.float64) ** 2, np.ones(221) / 221, "same")
    times = [energy[:round(0.3 * rate)].argmax() / rate]
    while (times[-1] + 1.3 * period) * rate < len(x):
        lo = round((times[-1] + 0.7 * period) * rate)
        times.append((lo + energy[lo:round((times[-1] + 1.3 * period) * rate)].argmax()) / rate)
    fit = np.polyfit(np.arange(len(times)), times, 1)
    return float(fit[0]), 1000 * float(np.abs(np.polyval(fit, np.arange(len(times))) - times).max())


def click_track(seconds: float, rate: int, period: float = 0.5) -> np.ndarray:
    """Clicks (4.5 ms Hann bursts) every ``period`` s: 120 bpm by default."""
    track = np.zeros(round(seconds * rate), np.float32)
    for i in range(int(seconds / period)):
        start = round(i * period * rate)
        track[start:start + 200] = np.hanning(200)
    return track
