"""Small helpers every stage shares: atomic writes, JSON/npy/audio files (any format
ffmpeg decodes, FLAC written), status dicts, I/O thread pools and timing.

The per-track contract that uses the status dicts lives in ``soloist.tracks``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

log = logging.getLogger("soloist")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class TrackError(Exception):
    """Bad input for one track: recorded as a failure row, never fatal for the run."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def write_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save, atomically; via a buffer, since saving to a path embeds the (temporary)
    file name in the archive and the bytes would differ from run to run."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def write_png(path: str | os.PathLike, fig: Any, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int,
                format: str = "FLAC") -> None:
    """Write ``audio`` [C, N] as 16-bit FLAC (or WAV): float (clipped to [-1, 1]) or int16
    samples."""
    data = audio.T if audio.dtype == np.int16 else np.clip(
        np.asarray(audio, dtype=np.float32), -1.0, 1.0).T
    with atomic_path(path) as tmp:
        sf.write(tmp, data, sample_rate, format=format, subtype="PCM_16")


def write_spectrograms(path: str | os.PathLike, waves: dict[str, np.ndarray], rate: int,
                       columns: int = 1000) -> None:
    """One spectrogram per mono wave [N] {title: wave}, stacked on a shared time axis (PNG).

    At most ``columns`` STFT frames per wave, as many as the image shows: a 4-minute track
    then takes a fraction of a second, not the 20 s of matplotlib's own specgram.
    """
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(waves), 1, figsize=(8, 2.5 * len(waves)), sharex=True,
                             squeeze=False)
    for ax, (title, wave) in zip(axes[:, 0], waves.items(), strict=True):
        hop = max(256, -(-len(wave) // columns))
        spec = torch.stft(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
                          n_fft=1024, hop_length=hop, window=torch.hann_window(1024),
                          return_complex=True).abs()
        db = 20 * torch.log10(spec + 1e-7)
        top = max(float(db.max()), -40.0)  # silence stays dark
        ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=top - 90,
                  vmax=top, extent=(0, len(wave) / rate, 0, rate / 2))
        ax.set(title=title, ylabel="Hz")
    axes[-1, 0].set_xlabel("seconds")
    write_png(path, fig, dpi=80)


def read_audio(path: str | os.PathLike, piece_seconds: float | None = None
               ) -> tuple[np.ndarray, int]:
    """Read an audio file soundfile understands; returns ([C, N] float32, sample rate).

    With ``piece_seconds``, pieces of that length are decoded in parallel threads (FLAC
    seeks to the sample, and decoding releases the GIL): one long track no longer holds
    up a GPU that is waiting for it.
    """
    [(data, sample_rate)] = _read([path], "float32", piece_seconds)
    return np.ascontiguousarray(data.T), sample_rate


def read_pcm16(paths: list[str | os.PathLike], piece_seconds: float | None = None
               ) -> list[tuple[np.ndarray, int]]:
    """The samples of 16-bit files as stored: ([N, C] int16, sample rate) each; half the
    bytes of float32 and no transpose, for a GPU to convert (x / 32768 is ``read_audio``'s).
    The pieces of all the files are decoded at once, so short files keep every thread busy."""
    return _read(paths, "int16", piece_seconds)


def _read(paths: list[str | os.PathLike], dtype: str, piece_seconds: float | None
          ) -> list[tuple[np.ndarray, int]]:
    if piece_seconds is None:
        return [sf.read(path, dtype=dtype, always_2d=True) for path in paths]
    out, pieces = [], []
    for path in paths:
        with sf.SoundFile(path) as f:
            frames, channels, sample_rate = f.frames, f.channels, f.samplerate
        data = np.empty((frames, channels), dtype)
        out.append((data, sample_rate))
        step = max(1, round(piece_seconds * sample_rate))
        pieces += [(path, data[start:start + step], start) for start in range(0, frames, step)]

    def piece(path: str | os.PathLike, samples: np.ndarray, start: int) -> None:
        with sf.SoundFile(path) as f:
            f.seek(start)
            if f.read(len(samples), dtype=dtype, always_2d=True, out=samples
                      ).shape[0] != len(samples):
                raise sf.LibsndfileError(0, f"{path}: short read at frame {start}")

    list(io_pool().map(lambda p: piece(*p), pieces))
    return out


AUDIO_EXTENSIONS = {
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac",
    ".aif", ".aiff", ".wv", ".webm", ".mka", ".wma",
}  # fmt: skip


def _ff_message(stderr: str, path: str | os.PathLike) -> str:
    """ffmpeg's stderr as one readable line (no '[mp3 @ 0x..]' or path prefixes)."""
    lines = []
    for line in stderr.splitlines():
        line = re.sub(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*", "", line.strip())
        line = line.removeprefix(f"{path}: ").strip()
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines)[:300] or "unknown ffmpeg error"


def probe(path: str | os.PathLike) -> dict:
    """sample_rate, channels, duration (s, None if unknown) and codec of the first audio stream.

    Raises TrackError with a readable message when ffprobe cannot read the file.
    """
    path = Path(path)
    if not path.is_file():
        raise TrackError(f"file not found: {path}")
    cmd = [
        "ffprobe", "-v", "error", "-select_streams", "a:0", "-of", "json",
        "-show_entries", "stream=codec_name,sample_rate,channels,duration:format=duration",
        str(path),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise TrackError(f"cannot decode {path.name}: {_ff_message(result.stderr, path)}")
    data = json.loads(result.stdout or "{}")
    streams = data.get("streams") or []
    if not streams:
        raise TrackError(f"cannot decode {path.name}: no audio stream")
    stream = streams[0]
    # An ID3 tag before garbage still makes an "mp3" stream, one without rate or channels.
    if not int(stream.get("sample_rate") or 0) or not int(stream.get("channels") or 0):
        raise TrackError(f"cannot decode {path.name}: no audio stream ffprobe can read "
                            f"(no frame of {stream.get('codec_name') or 'audio'} found)")

    def seconds(value: Any) -> float | None:
        try:
            value = float(value)
        except (TypeError, ValueError):  # "N/A" or absent
            return None
        return value if math.isfinite(value) else None

    duration = seconds(data.get("format", {}).get("duration")) or seconds(stream.get("duration"))
    return {
        "sample_rate": int(stream.get("sample_rate") or 0),
        "channels": int(stream.get("channels") or 0),
        "duration": duration,
        "codec": stream.get("codec_name"),
    }


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decode any file ffmpeg reads to float32 [2, N] at ``sample_rate``, without gain change.

    Mono is duplicated to both channels here rather than by ffmpeg, whose upmix lowers
    the level by 3 dB. More than two channels raise TrackError (no silent downmix).
    """
    path = Path(path)
    channels = probe(path)["channels"]
    if channels not in (1, 2):
        raise TrackError(f"{channels} channels in {path.name}; only mono or stereo is read")
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
        "-ar", str(sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0:
        message = _ff_message(result.stderr.decode(errors="replace"), path)
        raise TrackError(f"cannot decode {path.name}: {message}")
    audio = np.frombuffer(result.stdout, dtype="<f4").reshape(-1, channels).T
    if channels == 1:
        audio = np.repeat(audio, 2, axis=0)
    return np.ascontiguousarray(audio, dtype=np.float32)


def stem_files(folder: Path) -> dict[str, Path]:
    """{stem name: path} of the audio files in a stems folder, the mixture excluded."""
    return {p.stem: p for p in audio_files(folder) if p.stem.lower() != "mixture"}


def audio_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_EXTENSIONS
    )


def unclipped(audio: np.ndarray) -> np.ndarray:
    """``audio`` scaled down as a whole if its peak would clip, else as it is."""
    return audio / max(1.0, float(np.abs(audio).max()))


def peak_db(audio: np.ndarray) -> float:
    """The peak level of ``audio`` in dBFS (-inf for silence or no samples)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def touch_empty(*paths: str | os.PathLike) -> None:
    """Placeholder data files for a failed track (its status JSON says why)."""
    for p in paths:
        with atomic_path(p):
            pass


def failed(stage: str, reason: str, **extra: Any) -> dict:
    return {"ok": False, "stage": stage, "reason": reason, **extra}


# Every output made with random-init models says so (stats, metadata, logs, pages, report).
RANDOM_WARNING = (
    "RANDOM-INIT WEIGHTS: these outputs come from randomly initialised Demucs/codec models "
    "(weights=random). They exercise the pipeline but are NOT musically meaningful."
)

# Listening pages fit a 1280 px screen: the table takes the page's width in fixed columns
# (the first narrower) and every player and image fills its cell.
PAGE_STYLE = (
    "body{font-family:sans-serif;margin:8px} table{width:100%;table-layout:fixed}"
    " th:first-child{width:10%} td{padding:4px;vertical-align:top;overflow-wrap:anywhere}"
    " audio,img{width:100%} .warning{background:#fdd;border:2px solid #c00;padding:8px;"
    "font-weight:bold}"
)


def data_uri(path: str | os.PathLike, mime: str) -> str:
    """The file as a ``data:`` URI, for a page that must stand alone (the workflow report)."""
    import base64

    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def setup_logging(log_file: str | os.PathLike | None = None) -> None:
    """Log to the rule's log file (Snakemake ``log:``) and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )

    def log_uncaught(kind: type, value: BaseException, tb: Any) -> None:
        # into the rule's log too, where the workflow's onerror handler reads the reason
        logging.getLogger("soloist").critical("%s: %s", kind.__name__, value,
                                              exc_info=(kind, value, tb))

    sys.excepthook = log_uncaught


def io_workers() -> int:
    """Threads for reading and writing files: up to 16, within the CPUs this job may use."""
    return max(1, min(16, len(os.sched_getaffinity(0))))


_IO_POOL: ThreadPoolExecutor | None = None


def io_pool() -> ThreadPoolExecutor:
    """One process-wide pool of ``io_workers()`` threads for pieces of files. Its tasks
    never wait on each other, so callers in other threads may block on it safely."""
    global _IO_POOL
    if _IO_POOL is None:
        _IO_POOL = ThreadPoolExecutor(io_workers(), thread_name_prefix="io")
    return _IO_POOL


def prefetch(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 2,
             ahead: int = 3) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Yield ``(item, fn(item), None)`` or ``(item, None, error)`` in order, computing the
    next ``ahead`` items in ``workers`` threads while the caller works on the current one.

    The first items start at once, not at the first ``next``: a stage reads its first
    tracks while it loads its model. Audio decoding releases the GIL, so reading the next
    tracks overlaps with GPU work.
    """
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="prefetch")
    it = iter(items)
    queue = deque((item, pool.submit(fn, item)) for item in itertools.islice(it, ahead + 1))
    return _in_order(pool, fn, it, queue)


def _in_order(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], it: Iterator[Any],
              queue: deque) -> Iterator[tuple[Any, Any, BaseException | None]]:
    with pool:
        while queue:
            item, future = queue.popleft()
            nxt = next(it, _END)
            if nxt is not _END:
                queue.append((nxt, pool.submit(fn, nxt)))
            try:
                yield item, future.result(), None
            except Exception as e:  # the caller records it for this item
                yield item, None, e


_END = object()


class Background:
    """A few writer threads with a bounded backlog: ``submit`` blocks while ``limit`` tasks
    are pending, so results cannot pile up in memory when the GPU outruns the disk."""

    def __init__(self, workers: int = 4, limit: int = 8):
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="write")
        self._slots = threading.BoundedSemaphore(max(1, limit))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        self._slots.acquire()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Clock:
    """Wall seconds spent in named spans, for the one log line that says where a stage's
    time went (``with clock("model"): ...``, ``for x in clock.iter("reading", it)``)."""

    def __init__(self) -> None:
        self.spans: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spans[name] = self.spans.get(name, 0.0) + time.perf_counter() - start

    def iter(self, name: str, items: Iterable[Any]) -> Iterator[Any]:
        it = iter(items)
        while True:
            with self(name):
                item = next(it, _END)
            if item is _END:
                return
            yield item

    def __str__(self) -> str:
        total = time.perf_counter() - self.start
        return f"{total:.2f} s (" + ", ".join(f"{k} {v:.2f} s" for k, v in self.spans.items()) + ")"
