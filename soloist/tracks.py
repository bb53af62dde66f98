"""The per-track contract: where each stage puts a track's files, and how a stage runs.

Per-track stages (ingest, separate, clip, tokenize) run in batch jobs through ``run_batch``:
it skips the tracks already done, finishes those whose upstream failed, and hands the rest
to the stage's work, which ends each track with ``attempt`` (or ``finish``/``fail``). A
track's status JSON is written last and atomically and holds its provenance, a hash of
everything that shapes its files (the stage's settings, its model's weights, the upstream
track's provenance, the source). When Snakemake reruns the job (one of its tracks or
settings changed, or the last attempt was killed) only the tracks whose status is missing
or holds another provenance are redone: a grown batch does its new track, a killed one the
tracks it had not finished. A failed track gets empty data files and a status saying why;
it never stops the others.

The job's declared output is its record, ``results/<stage>/<batch>.json``, written last:
it lists the batch's tracks, and consumers read their tracks from it, never from what a
folder happens to hold (a track removed from the sheet keeps its files, unused, so that
adding it back costs nothing). ``LAYOUT`` is the one place that names a track's files;
producers, consumers and ``rules/common.smk`` ask it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soloist.io import TrackError, failed, read_json, touch_empty, write_json

log = logging.getLogger("soloist.tracks")

SPLITS = ("train", "valid", "test")

# Where each stage puts one track's files, under its batch folder; "status" is written last.
# A pattern ending in "/" is a folder that only some settings fill (separate.keep_stems).
LAYOUT = {
    "ingest": {"audio": "audio/{track}.flac", "status": "info/{track}.json"},
    "separate": {"context": "{track}/context.flac", "target": "{track}/target.flac",
                 "stems": "{track}/stems/", "status": "{track}/separate.json"},
    "augment": {"context": "{track}/context.flac", "target": "{track}/target.flac",
                "status": "{track}/augment.json"},
    "clip": {"windows": "{track}/windows.parquet", "status": "{track}/clip.json"},
    "tokenize": {"context": "{track}/context.npy", "target": "{track}/target.npy",
                 "mix": "{track}/mix.npy", "status": "{track}/tokens.json"},
}
# The roles a stage writes from each upstream, where not all of its LAYOUT's: task:
# continuation tokenizes the ingested recording whole (its mix), not separated roles
ROLES = {"tokenize": {"separate": ("context", "target"), "augment": ("context", "target"),
                      "ingest": ("mix",)}}


# A variant of a track (augment: its pitch and tempo changed) is a track of its own, named
# `<track>~p<semitones>t<tempo>`; '~' is in no track id, so the name says its original.
VARIANT = "~"


def variant_name(track: str, semitones: float, tempo: float) -> str:
    """``song~p+2t0.90``: the name of ``track`` shifted by ``semitones`` at ``tempo``."""
    return f"{track}{VARIANT}p{semitones:+g}t{tempo:.2f}"


def original_of(name: str) -> tuple[str, str]:
    """(original track, variant) of a track name; the variant is "" for an original."""
    original, _, variant = name.partition(VARIANT)
    return original, variant


def split_of(track: str, fractions: dict[str, float]) -> str:
    """Deterministic split from a hash of the track id (stable across runs and machines)."""
    u = int(hashlib.sha256(track.encode()).hexdigest()[:12], 16) / 16**12
    edge = 0.0
    for split in SPLITS:
        edge += fractions[split]
        if u < edge:
            return split
    return SPLITS[-1]


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


# How a failed track's data file of a role is left empty, where 0 bytes would not do
# (clip's windows: an empty table, which readers read as no windows)
Empty = dict[str, Callable[[Path], None]]


@dataclass(frozen=True)
class Track:
    """One track's files by stage and role (``track["ingest"]["audio"]``), and, for the
    stage that writes ``track.out`` from the files of ``track.inputs``, the provenance its
    status will hold."""

    name: str
    files: dict[str, dict[str, Path]]
    stage: str = ""
    provenance: str | None = None
    empty: Empty = field(default_factory=dict)
    upstream: str = ""  # the stage whose files ``stage`` reads: separate, or augment's variants

    def __getitem__(self, stage: str) -> dict[str, Path]:
        return self.files[stage]

    @property
    def out(self) -> dict[str, Path]:
        """The files this track's stage writes, ``status`` among them."""
        return self.files[self.stage]

    @property
    def whole(self) -> bool:
        """Whether this stage reads the ingested recording whole (task: continuation), not
        separated roles."""
        return self.upstream == "ingest"

    @property
    def inputs(self) -> dict[str, Path]:
        """The files this track's stage reads, ``status`` among them."""
        return self.files[self.upstream]

    def data(self) -> dict[str, Path]:
        """The stage's data files by role (not its status, nor optional folders, nor the
        roles it does not make from its upstream)."""
        made = ROLES.get(self.stage, {}).get(self.upstream)
        return {role: path for role, path in self.out.items()
                if role != "status" and not LAYOUT[self.stage][role].endswith("/")
                and (made is None or role in made)}


@dataclass(frozen=True)
class Batch:
    """One batch job's outputs: its record ``<dir>.json`` and its tracks' files in ``<dir>/``."""

    stage: str
    record: Path
    empty: Empty = field(default_factory=dict)

    @classmethod
    def of(cls, stage: str, record: str | os.PathLike, empty: Empty | None = None) -> Batch:
        return cls(stage, Path(record), empty or {})

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

    def done(self, track: Track) -> bool:
        """Whether the track's files are complete and made from its provenance."""
        try:
            status = read_json(track.out["status"])
        except (OSError, ValueError):
            return False
        return status.get("provenance") == track.provenance and \
            all(p.is_file() for p in track.data().values())

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


def track_of(name: str, *batches: Batch, provenance: str | None = None,
             source: str | None = None) -> Track:
    """Track ``name``'s files in ``batches``; the last one's stage writes it from the files
    of the one before, which are ``source``'s (default: its own; a variant is made from
    its original's)."""
    out, upstream = batches[-1], batches[-2].stage if len(batches) > 1 else ""
    files = {b.stage: b.files(source if b.stage == upstream and source else name)
             for b in batches}
    return Track(name, files, out.stage, provenance, out.empty, upstream)


def ingested_audio(records: list[str | os.PathLike], split: str,
                   explicit_splits: dict[str, str], fractions: dict[str, float]) -> list[Path]:
    """The ingested audio of the tracks of ``split`` that ingest's batch ``records`` list as
    ok: the split the sheet gives their row (``explicit_splits``), or else the hash's."""
    files = []
    for record in records:
        batch = Batch.of("ingest", record)
        for t in read_json(record)["tracks"]:
            if not t["ok"]:
                continue
            row = read_json(batch.files(t["track"])["status"]).get("row", t["track"])
            if (explicit_splits.get(row) or split_of(t["track"], fractions)) == split:
                files.append(batch.files(t["track"])["audio"])
    return sorted(files)


def made_from(records: dict[str, str | os.PathLike | None]
              ) -> tuple[dict[str, Batch], dict[str, str]]:
    """What clip and tokenize read: the batch each track comes from, and its provenance
    there, from upstream ``records`` by stage (a separate batch's record, and augment's
    record of its variants if any; for task: continuation, an ingest batch's)."""
    batches, provenances = {}, {}
    for stage, record in records.items():
        if record:
            batch = Batch.of(stage, record)
            for track, p in batch.tracks().items():
                batches[track], provenances[track] = batch, p
    return batches, provenances


def upstream_records(inputs: Any) -> dict[str, str]:
    """A clip or tokenize job's upstream records by stage, from its Snakemake inputs named
    ``separated``, ``augmented`` (variants) or ``ingested`` (task: continuation)."""
    names = {"separated": "separate", "augmented": "augment", "ingested": "ingest"}
    return {stage: inputs.get(name) for name, stage in names.items() if inputs.get(name)}


def finish(track: Track, status: dict) -> dict:
    """Write the track's status with its provenance, last; a failed track's data files are
    left empty (its status says why)."""
    if not status["ok"]:
        for role, path in track.data().items():
            track.empty.get(role, touch_empty)(path)
    status = status | {"provenance": track.provenance}
    write_json(track.out["status"], status)
    return status


def fail(track: Track, error: BaseException, **ids: Any) -> dict:
    """Finish ``track`` as failed with ``error`` as its reason (a TrackError's message is
    the reason itself; anything else is named by its type)."""
    if isinstance(error, TrackError):
        reason = str(error)
        log.warning("%s failed for %s: %s", track.stage, track.name, reason)
    else:
        reason = f"{type(error).__name__}: {error}"
        log.error("%s failed for %s: %s", track.stage, track.name, reason, exc_info=error)
    return finish(track, failed(track.stage, reason, **{"track": track.name, **ids}))


def attempt(track: Track, work: Callable[[], dict], **ids: Any) -> dict:
    """``work()`` writes the track's data files and returns its status; then the status is
    written. Any error fails this track alone: one bad track must not stop the others."""
    try:
        status = work()
    except Exception as e:
        return fail(track, e, **ids)
    return finish(track, status)


def run_batch(out: Batch, provenances: dict[str, str], work: Callable[[list[Track]], Any],
              upstream: Batch | dict[str, Batch] | None = None,
              sources: dict[str, str] | None = None) -> list[dict]:
    """Run a stage over the tracks of ``provenances`` (track -> expected provenance): those
    already done are kept, those whose upstream status failed are finished with it, and
    ``work(tracks)`` does the rest (ending each with ``attempt``, ``finish`` or ``fail``).
    Then the record; returns every track's status, in order.

    ``upstream`` is the batch the tracks are made from, or a batch per track; ``sources``
    names, for a track made from another one's files (a variant), that track.
    """
    def made_from(track: str) -> tuple[Batch, ...]:
        batch = upstream.get(track) if isinstance(upstream, dict) else upstream
        return (batch, out) if batch else (out,)

    tracks = [track_of(t, *made_from(t), provenance=p, source=(sources or {}).get(t))
              for t, p in provenances.items()]
    todo = [t for t in tracks if not out.done(t)]
    log.info("%s %s: %d of %d tracks to do, %d unchanged kept", out.stage, out.dir.name,
             len(todo), len(tracks), len(tracks) - len(todo))
    if todo:
        log.info("to do: %s", " ".join(t.name for t in todo))
    ready = [t for t in todo if not (t.upstream and _upstream_failed(t))]
    if ready:
        work(ready)
    return out.write_record(provenances)


def run_track(track: Track, work: Callable[[list[Track]], Any]) -> dict:
    """One track through a stage's ``work``, as ``run_batch`` runs each (a single call, not
    a batch job: no record); its status."""
    if not _upstream_failed(track):
        work([track])
    return read_json(track.out["status"])


def _upstream_failed(track: Track) -> bool:
    """Whether the track's upstream stage failed it; if so it is finished with that status,
    which says where and why."""
    failure = read_json(track.inputs["status"])
    if failure.get("ok", False):
        return False
    finish(track, failure)
    return True
