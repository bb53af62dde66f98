"""A batch job's tracks: where each stage puts their files, and which are already done.

Per-track stages run in batch jobs. A batch job writes each track's files, then the
track's status JSON, last and atomically; the status holds the track's provenance, a hash
of everything that shapes its files (the stage's settings, its model's weights, the
upstream track's provenance, the source). When Snakemake reruns the job (one of its
tracks or settings changed, or the last attempt was killed) it redoes only the tracks
whose status is missing or holds another provenance: a grown batch does its new track,
a killed one the tracks it had not finished.

The job's declared output is its record, ``results/<stage>/<batch>.json``, written last:
it lists the batch's tracks, and consumers read their tracks from it, never from what a
folder happens to hold (a track removed from the sheet keeps its files, unused, so that
adding it back costs nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soloist.io import read_json, write_json

log = logging.getLogger("soloist.tracks")

# Where each stage puts one track's files, under its batch folder; "status" is written last.
LAYOUT = {
    "ingest": {"audio": "audio/{track}.flac", "status": "info/{track}.json"},
    "separate": {"context": "{track}/context.flac", "target": "{track}/target.flac",
                 "status": "{track}/separate.json"},
    "clip": {"windows": "{track}/windows.parquet", "status": "{track}/clip.json"},
    "tokenize": {"context": "{track}/context.npy", "target": "{track}/target.npy",
                 "status": "{track}/tokens.json"},
}


def provenance(*parts: Any) -> str:
    """A short hash of JSON-able ``parts`` (dict key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(paths: Iterable[str | os.PathLike]) -> list:
    """What identifies source files without reading them: path, size and mtime (what
    Snakemake looks at, too); a missing file is ``None``."""
    out = []
    for path in sorted(map(str, paths)):
        try:
            st = os.stat(path)
            out.append([path, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([path, None])
    return out


@dataclass(frozen=True)
class Batch:
    """One batch job's outputs: its record ``<dir>.json`` and its tracks' files in ``<dir>/``."""

    stage: str
    record: Path

    @classmethod
    def of(cls, stage: str, record: str | os.PathLike) -> Batch:
        return cls(stage, Path(record))

    @property
    def dir(self) -> Path:
        return self.record.with_suffix("")

    def files(self, track: str) -> dict[str, Path]:
        """The track's files by role (LAYOUT), ``status`` among them."""
        return {role: self.dir / pattern.format(track=track)
                for role, pattern in LAYOUT[self.stage].items()}

    def tracks(self) -> dict[str, str]:
        """Track -> provenance, in record order, of a finished batch."""
        return {t["track"]: t["provenance"] for t in read_json(self.record)["tracks"]}

    def done(self, track: str, expected: str) -> bool:
        """Whether the track's files are complete and made from ``expected`` provenance."""
        files = self.files(track)
        try:
            status = read_json(files["status"])
        except (OSError, ValueError):
            return False
        return status.get("provenance") == expected and all(p.is_file() for p in files.values())

    def write_record(self, provenances: dict[str, str]) -> list[dict]:
        """The record of these tracks, each finished with its provenance; their statuses."""
        statuses, rows = [], []
        for track, prov in provenances.items():
            status = read_json(self.files(track)["status"])
            if status.get("provenance") != prov:
                raise RuntimeError(f"{self.stage} left {track} unfinished")
            statuses.append(status)
            rows.append({"track": track, "ok": status["ok"], "provenance": prov})
        write_json(self.record, {"stage": self.stage, "tracks": rows})
        return statuses


def run_batch(out: Batch, provenances: dict[str, str],
              work: Callable[[list[str]], Any]) -> list[dict]:
    """``work(todo)`` for the tracks of ``provenances`` (track -> expected provenance) not
    already done, then the record; returns every track's status, in order.

    ``work`` writes each track's files and then its status with that provenance.
    """
    todo = [t for t, prov in provenances.items() if not out.done(t, prov)]
    kept = len(provenances) - len(todo)
    log.info("%s %s: %d of %d tracks to do, %d unchanged kept", out.stage, out.dir.name,
             len(todo), len(provenances), kept)
    if todo:
        log.info("to do: %s", " ".join(todo))
        work(todo)
    return out.write_record(provenances)
