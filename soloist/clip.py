"""Clip selection: fixed-length windows where the soloist plays over the backing.

A per-track stage (soloist.tracks). Loudness is judged relative to each track's own level:
a frame is active when its RMS is within ``relative_db`` of the track's active level (a
high percentile of its frame RMS), and never below an absolute floor. Rests shorter than
``bridge_seconds`` count as playing, so phrases separated by a breath stay one solo.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from soloist.io import TrackError, atomic_path, read_audio
from soloist.tracks import Batch, Track, attempt, made_from, provenance, run_batch, run_track

log = logging.getLogger("soloist.clip")

WINDOW_SCHEMA = pa.schema([
    ("track", pa.string()), ("window", pa.int32()), ("start", pa.float64()),
    ("end", pa.float64()), ("active_fraction", pa.float32()),
    ("context_active_fraction", pa.float32()), ("target_rms_db", pa.float32()),
    ("context_rms_db", pa.float32()),
])


def frame_period(sample_rate: int, hop_seconds: float) -> float:
    """Seconds between frame starts: the hop rounded to whole samples, as frames step.

    Converting frame indices with ``hop_seconds`` itself would drift when the hop is not a
    whole number of samples (0.05 s at 22,050 Hz steps 1,102 samples: 0.2 s late at 600 s).
    """
    return round(hop_seconds * sample_rate) / sample_rate


def frame_rms_db(audio: np.ndarray, sample_rate: int, frame_seconds: float,
                 hop_seconds: float) -> np.ndarray:
    """RMS in dBFS of ``audio`` [C, N] (channels averaged in power) per frame: [F].

    Frame ``i`` starts at ``i * frame_period(sample_rate, hop_seconds)`` seconds.
    """
    frame, hop = round(frame_seconds * sample_rate), round(hop_seconds * sample_rate)
    power = np.mean(np.asarray(audio, np.float64) ** 2, axis=0)
    if power.size < frame:
        return np.zeros(0)
    # Frame sums from a cumulative sum: O(N) whatever the frame length.
    csum = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(0, power.size - frame + 1, hop)
    mean = (csum[starts + frame] - csum[starts]) / frame
    return 10 * np.log10(np.maximum(mean, 1e-12))


def active_frames(rms_db: np.ndarray, settings: dict) -> tuple[np.ndarray, float]:
    """Boolean activity per frame and the threshold (dBFS) used."""
    if rms_db.size == 0:
        return np.zeros(0, bool), float(settings["floor_db"])
    level = float(np.percentile(rms_db, settings["active_percentile"]))
    threshold = max(level - settings["relative_db"], settings["floor_db"])
    return rms_db > threshold, threshold


def bridge(mask: np.ndarray, max_gap: int) -> np.ndarray:
    """Fill runs of False no longer than ``max_gap`` frames that lie between True frames."""
    mask = mask.copy()
    on = np.flatnonzero(mask)
    if on.size < 2:
        return mask
    gaps = np.flatnonzero(np.diff(on) > 1)
    for g in gaps:
        a, b = on[g], on[g + 1]
        if b - a - 1 <= max_gap:
            mask[a + 1:b] = True
    return mask


def select_windows(target_active: np.ndarray, context_active: np.ndarray, period: float,
                   duration: float, settings: dict) -> list[tuple[float, float, float, float]]:
    """Grid windows of ``settings['seconds']`` every ``settings['hop']`` seconds that pass;
    frames start every ``period`` seconds (``frame_period``).

    Returns (start, end, target active fraction, context active fraction) per window.
    """
    length, step = settings["seconds"], settings["hop"]
    windows = []
    for start in np.arange(0.0, duration - length + 1e-9, step):
        a, b = round(start / period), round((start + length) / period)
        t = float(target_active[a:b].mean()) if b > a else 0.0
        c = float(context_active[a:b].mean()) if b > a else 0.0
        if t >= settings["min_active"] and c >= settings["min_context_active"]:
            windows.append((round(float(start), 6), round(float(start + length), 6), t, c))
    return windows


def clip(track: str, context: str | os.PathLike, target: str | os.PathLike,
         upstream_status: str | os.PathLike, windows_out: str | os.PathLike,
         status_out: str | os.PathLike, settings: dict, provenance: str | None = None) -> dict:
    """Write the selected windows of one track (Parquet) and its status JSON (holding
    ``provenance``: what made it)."""
    upstream = {"context": context, "target": target, "status": upstream_status}
    files = {"separate": {k: Path(p) for k, p in upstream.items()},
             "clip": {"windows": Path(windows_out), "status": Path(status_out)}}
    t = Track(track, files, "clip", provenance, EMPTY, "separate")
    return run_track(t, lambda todo: clip_tracks(todo, settings))


def clip_batch(records: dict[str, str | os.PathLike], record: str | os.PathLike,
               settings: dict, shape: dict, task: dict | None = None) -> list[dict]:
    """Clip every track of the upstream ``records`` by stage (a separate batch's and
    augment's of its variants, or an ingest batch's for task continuation or mix) into the
    batch of ``record``, keeping the tracks already clipped from the same audio with the same
    ``shape``. For ``task`` continuation or mix, a window is a (previous, next) pair of
    segments of ``task["seconds"]``, one every segment, where the recording plays."""
    if task and task["name"] != "solo":
        settings = settings | {"seconds": 2 * task["seconds"], "hop": task["seconds"],
                               "min_context_active": 0.0}
    upstream, made = made_from(records)
    provenances = {t: provenance("clip", shape, p) for t, p in made.items()}
    return run_batch(Batch.of("clip", record, EMPTY), provenances,
                     lambda todo: clip_tracks(todo, settings), upstream)


def clip_tracks(todo: list[Track], settings: dict) -> None:
    """Clip each separated track of ``todo``: its windows and status."""
    for track in tqdm(todo, desc="clip", unit="track", disable=len(todo) < 2):
        attempt(track, functools.partial(_clip, track, settings))


def _write_windows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=WINDOW_SCHEMA), tmp)


# A failed track's windows: an empty table, read as no windows
EMPTY = {"windows": lambda path: _write_windows(path, [])}


def _clip(track: Track, settings: dict) -> dict:
    """Select and write ``track``'s windows; its status. A recording taken whole (task:
    continuation) is its own target: windows where it plays."""
    target_audio, rate = read_audio(track.inputs["audio" if track.whole else "target"])
    context_audio = target_audio if track.whole else read_audio(track.inputs["context"])[0]
    duration = target_audio.shape[1] / rate
    if duration < settings["seconds"]:
        raise TrackError(f"track is {duration:.1f} s, shorter than one window "
                         f"(clip.seconds={settings['seconds']})")
    frame, hop = settings["frame_seconds"], settings["hop_seconds"]
    target_db = frame_rms_db(target_audio, rate, frame, hop)
    context_db = frame_rms_db(context_audio, rate, frame, hop)
    period = frame_period(rate, hop)
    gap = round(settings["bridge_seconds"] / period)
    target_on, target_threshold = active_frames(target_db, settings)
    context_on, context_threshold = active_frames(context_db, settings)
    target_on = bridge(target_on, gap)
    context_on = bridge(context_on, gap)
    windows = select_windows(target_on, context_on, period, duration, settings)
    rows = []
    for i, (start, end, t_frac, c_frac) in enumerate(windows):
        a, b = round(start / period), round(end / period)
        rows.append({
            "track": track.name, "window": i, "start": start, "end": end,
            "active_fraction": t_frac, "context_active_fraction": c_frac,
            "target_rms_db": _mean_db(target_db[a:b]), "context_rms_db": _mean_db(context_db[a:b]),
        })
    status = {
        "ok": True, "stage": "clip", "track": track.name, "duration": round(duration, 4),
        "windows": len(rows), "active_seconds": round(float(target_on.sum()) * period, 3),
        "target_threshold_db": round(target_threshold, 2),
        "context_threshold_db": round(context_threshold, 2),
        "active_intervals": [[round(a * period, 3), round(b * period, 3)]
                             for a, b in _runs(target_on)],
    }
    if not rows:
        log.warning("%s: no %s s window where the soloist plays", track.name,
                    settings["seconds"])
    _write_windows(track.out["windows"], rows)
    return status


def _mean_db(db: np.ndarray) -> float:
    """Level of the mean power of frames given in dB."""
    return float(10 * np.log10(np.mean(10 ** (db / 10)))) if db.size else float("-inf")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame index pairs of the True runs in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))
