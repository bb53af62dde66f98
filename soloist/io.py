"""Small helpers every stage shares: atomic writes, audio files, per-track status.

Every per-track stage writes a status JSON next to its data. A track that failed
upstream (or here) keeps flowing through the DAG with empty data files and a status
that says where and why, so one bad recording never stops a run and shard can list
it in ``results/failures.tsv``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
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


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Write ``audio`` [C, N] float as 16-bit FLAC (clipped to [-1, 1])."""
    data = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0).T
    with atomic_path(path) as tmp:
        sf.write(tmp, data, sample_rate, format="FLAC", subtype="PCM_16")


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file soundfile understands; returns ([C, N] float32, sample rate)."""
    data, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), sample_rate


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


def first_failure(*status_paths: str | os.PathLike) -> dict | None:
    """The first failed upstream status among ``status_paths``, or None if all are ok."""
    for p in status_paths:
        status = read_json(p)
        if not status.get("ok", False):
            return status
    return None


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
