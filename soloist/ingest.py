"""Ingest: turn one source (URL, local file, stems folder, demo) into normalized audio.

Every track ends with two files: ``audio_out`` (stereo 16-bit FLAC at the configured rate,
no gain change) and ``info_out`` (a status JSON). Bad input never raises: the audio file
is left empty and the status says why, so one broken recording never stops a run.

URLs go through two steps. ``resolve`` lists a URL's entries without downloading (a
podcast feed or playlist becomes several tracks); ``ingest`` then downloads one entry
into a cache keyed by URL and decodes it with ffmpeg. ffmpeg and ffprobe are always
called with argument lists, never through a shell.
"""

from __future__ import annotations

import hashlib
import http
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yt_dlp
from tqdm import tqdm
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import DownloadError, ExtractorError, unsmuggle_url

from soloist import io, tracks
from soloist.condition import truth_tags
from soloist.tracks import Batch, Track, fingerprint, provenance, run_batch

log = logging.getLogger("soloist.ingest")


RESOLVED_HEADER = ("track", "url", "title", "error")


# ---------------------------------------------------------------- settings and checks


def _duration_problem(duration: float | None, s: dict) -> str | None:
    if duration is None:
        return None
    if duration > s["max_seconds"]:
        return f"duration {duration:.0f} s above ingest.max_seconds={s['max_seconds']:g}"
    if duration < s["min_seconds"]:
        return f"duration {duration:.2f} s below ingest.min_seconds={s['min_seconds']:g}"
    return None


def _check_format(meta: dict, s: dict, name: str) -> None:
    """Reject what we will not convert, before spending time decoding it."""
    if meta["sample_rate"] < s["min_sample_rate"]:
        raise io.TrackError(
            f"sample rate {meta['sample_rate']} Hz below ingest.min_sample_rate="
            f"{s['min_sample_rate']} ({name})"
        )
    if meta["channels"] > s["max_channels"]:
        raise io.TrackError(
            f"{meta['channels']} channels; at most ingest.max_channels={s['max_channels']} "
            f"are supported ({name})"
        )
    problem = _duration_problem(meta["duration"], s)
    if problem:
        raise io.TrackError(problem)


def _check_audio(audio: np.ndarray, s: dict) -> None:
    problem = _duration_problem(audio.shape[1] / s["sample_rate"], s)
    if problem:
        raise io.TrackError(problem)
    peak_db = io.peak_db(audio)
    if peak_db < s["silence_db"]:
        raise io.TrackError(
            f"silent: peak {peak_db:.1f} dBFS below ingest.silence_db={s['silence_db']:g}"
        )


def _read_file(path: Path, s: dict) -> tuple[np.ndarray, dict]:
    meta = io.probe(path)
    _check_format(meta, s, path.name)
    audio = io.load_audio(path, s["sample_rate"])
    # A header ffprobe believes (an MP3's Info frame) before data ffmpeg cannot decode: the
    # track is broken, not short.
    decoded, claimed = audio.shape[1] / s["sample_rate"], meta["duration"]
    if not audio.shape[1] or (claimed and decoded < s["min_seconds"] <= claimed):
        of = f" of its {claimed:.2f} s" if claimed else ""
        raise io.TrackError(f"cannot decode {path.name}: only {decoded:.2f} s{of} decodes")
    _check_audio(audio, s)
    return audio, meta


# ---------------------------------------------------------------- yt-dlp


class _YtdlpLogger:
    """Routes yt-dlp's screen output to Python logging (nothing on stdout)."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    def info(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    def warning(self, msg: str) -> None:
        # Every plain file URL triggers this one; it is not worth a warning.
        level = logging.DEBUG if "Falling back on generic" in msg else logging.WARNING
        log.log(level, "yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        # The failure is recorded in the track's status; keep the log quiet about it.
        log.info("yt-dlp: %s", msg)


def _ytdlp_options(y: dict) -> dict:
    opts = {
        "logger": _YtdlpLogger(),
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "retries": y["retries"],
        "fragment_retries": y["retries"],
        "socket_timeout": y["socket_timeout"],
    }
    if y["rate_limit"]:
        opts["ratelimit"] = int(y["rate_limit"])
    if y["cookies"]:
        opts["cookiefile"] = str(y["cookies"])
    return opts


def _ytdlp_reason(err: BaseException) -> str:
    """One readable line for a yt-dlp failure, e.g. 'HTTP Error 404: Not Found'."""
    exc_info = getattr(err, "exc_info", None)
    cause = exc_info[1] if exc_info and exc_info[1] is not None else err
    if isinstance(cause, HTTPError):
        try:
            phrase = http.HTTPStatus(cause.status).phrase
        except ValueError:
            phrase = cause.reason
        return f"HTTP Error {cause.status}: {phrase}"
    message = str(cause.orig_msg if isinstance(cause, ExtractorError) else cause)
    if isinstance(cause, TransportError):
        # urllib3/socket errors bury the useful part: "... [Errno 111] Connection refused"
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", message)
        if errno:
            return errno.group(1).strip().lower()
    message = re.sub(r"\x1b\[[0-9;]*m", "", message)  # colour codes
    message = message.removeprefix("ERROR: ")
    message = re.sub(r"\s*\(caused by .*\)$", "", message, flags=re.S)
    lines = message.strip().splitlines()
    return lines[0][:300] if lines else type(cause).__name__


def _tsv_field(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value or "")).strip()


def resolve(row: str, url: str, out_tsv: str | os.PathLike, ytdlp: dict) -> None:
    """List a URL's entries (no download) into a TSV: track, url, title, error.

    A single recording gives one line (track=row); a playlist or podcast feed gives one
    line per entry (track=row.001, row.002, ...); a failure gives one line with the error.
    """
    opts = {**_ytdlp_options(ytdlp), "extract_flat": "in_playlist", "noplaylist": False}
    lines: list[tuple[str, str, str, str]] = []
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=False)
        if info.get("_type") in ("playlist", "multi_video"):
            entries = list(info.get("entries") or [])
            if not entries:
                lines.append((row, url, info.get("title"), "playlist has no entries"))
            for i, entry in enumerate(entries, 1):
                track = f"{row}.{i:03d}"
                if not entry:
                    lines.append((track, url, "", "unavailable playlist entry"))
                    continue
                # The generic extractor smuggles data into the fragment; the plain URL works.
                entry_url = unsmuggle_url(entry.get("url") or entry.get("webpage_url") or "")[0]
                lines.append((track, entry_url, entry.get("title"), ""))
        else:
            lines.append((row, url, info.get("title"), ""))
    except DownloadError as err:
        lines = [(row, url, "", _ytdlp_reason(err))]
    except Exception as err:  # a bug, not bad input: still recorded, never fatal
        log.exception("resolve %s (%s) failed", row, url)
        lines = [(row, url, "", f"{type(err).__name__}: {err}")]
    with io.atomic_path(out_tsv) as tmp:
        text = "\t".join(RESOLVED_HEADER) + "\n"
        text += "".join("\t".join(_tsv_field(v) for v in line) + "\n" for line in lines)
        tmp.write_text(text)


def read_resolved(path: str | os.PathLike) -> list[dict]:
    """The rows of a resolve() TSV as dicts with keys track, url, title, error."""
    rows = []
    for line in Path(path).read_text().splitlines()[1:]:
        if line:
            fields = (line.split("\t") + [""] * 4)[:4]
            rows.append(dict(zip(RESOLVED_HEADER, fields, strict=True)))
    return rows


def url_cache_dir(url: str, downloads_dir: str | os.PathLike) -> Path:
    return Path(downloads_dir) / hashlib.sha256(url.encode()).hexdigest()[:16]


def download(url: str, downloads_dir: str | os.PathLike, s: dict) -> tuple[Path, dict]:
    """Download ``url`` once into ``downloads_dir/<sha256(url)[:16]>/``; reuse it afterwards.

    Returns (file path, metadata). The folder appears atomically (downloaded in a temp
    folder beside it, then renamed), so a folder that exists is complete.
    """
    cache = url_cache_dir(url, downloads_dir)
    if (cache / "info.json").is_file():
        meta = io.read_json(cache / "info.json")
        if (cache / meta["file"]).is_file():
            log.info("reusing download of %s from %s", url, cache)
            return cache / meta["file"], meta

    rejected: list[str] = []

    def match_filter(info: dict, incomplete: bool = False) -> str | None:
        # Reject out-of-bounds durations before downloading when the site reports them.
        problem = _duration_problem(info.get("duration"), s)
        if problem:
            rejected.append(problem)
        return problem

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared
    try:
        opts = {
            **_ytdlp_options(s["ytdlp"]),
            "format": s["ytdlp"]["format"],
            "outtmpl": {"default": str(tmp / "source.%(ext)s")},
            "noplaylist": True,
            "match_filter": match_filter,
        }
        try:
            with yt_dlp.YoutubeDL(opts) as ydl:
                info = ydl.extract_info(url, download=True)
        except DownloadError as err:
            raise io.TrackError(_ytdlp_reason(err)) from err
        if rejected:
            raise io.TrackError(rejected[0])
        if info.get("_type") in ("playlist", "multi_video"):
            raise io.TrackError(f"{url} is a playlist; resolve it into entries first")
        downloads = info.get("requested_downloads") or []
        if not downloads or not Path(downloads[0]["filepath"]).is_file():
            raise io.TrackError(f"yt-dlp downloaded nothing for {url}")
        path = Path(downloads[0]["filepath"])
        meta = {
            "url": url,
            "file": path.name,
            "title": info.get("title"),
            "uploader": info.get("uploader") or info.get("channel"),
            "license": info.get("license"),
            "duration": info.get("duration"),
            "webpage_url": info.get("webpage_url"),
            "extractor": info.get("extractor_key"),
        }
        io.write_json(tmp / "info.json", meta)
        try:
            os.rename(tmp, cache)
        except OSError:
            if not (cache / "info.json").is_file():
                raise
            # Another job finished the same URL meanwhile: use theirs.
            meta = io.read_json(cache / "info.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache / meta["file"], meta


# ---------------------------------------------------------------- ingest


def _find_track(resolved_tsv: str | os.PathLike, track: str) -> dict:
    for line in read_resolved(resolved_tsv):
        if line["track"] == track:
            return line
    raise io.TrackError(f"track {track} not listed in {Path(resolved_tsv).name}")


def _ingest_stems(folder: Path, s: dict) -> tuple[np.ndarray, dict]:
    if not folder.is_dir():
        raise io.TrackError(f"stems folder not found: {folder}")
    files = io.audio_files(folder)
    if not files:
        raise io.TrackError(f"no audio files in stems folder {folder}")
    mixtures = [p for p in files if p.stem.lower() == "mixture"]
    stems = list(io.stem_files(folder).values())
    names = [p.stem for p in stems]
    if mixtures:
        audio, meta = _read_file(mixtures[0], s)
        return audio, {**meta, "sha256": io.sha256_file(mixtures[0]), "stems": names}
    parts, hashes, meta = [], [], {}
    for p in stems:
        meta = io.probe(p)
        _check_format(meta, s, p.name)
        parts.append(io.load_audio(p, s["sample_rate"]))
        hashes.append(f"{p.name} {io.sha256_file(p)}\n")
    # Stems of slightly different lengths are zero-padded to the longest.
    audio = np.zeros((2, max(a.shape[1] for a in parts)), dtype=np.float32)
    for a in parts:
        audio[:, : a.shape[1]] += a
    _check_audio(audio, s)
    # No single source file: hash the list of "name sha256" lines instead.
    sha = hashlib.sha256("".join(hashes).encode()).hexdigest()
    return audio, {**meta, "sha256": sha, "stems": names}


def _demo_song(source: Path, track: str) -> dict:
    """A demo song's title, the solo intervals of its truth.json, beside its mixture or
    stems folder (clip selection is scored against them), and its tempo and key (its tags
    for condition.columns)."""
    folder = source.parent
    truth = io.read_json(folder / "truth.json")
    if source.is_dir():
        log.info("%s enters as the demo's ground-truth stems (demo.stems); no separation",
                 track)
    return {"title": folder.name, "solo_intervals": truth["solo_intervals"],
            "truth_tags": truth_tags(truth)}


def ingest(
    track: str,
    row: str,
    kind: str,
    source: str,
    audio_out: str | os.PathLike,
    info_out: str | os.PathLike,
    settings: dict,
    downloads_dir: str | os.PathLike | None,
    resolved_tsv: str | os.PathLike | None = None,
    provenance: str | None = None,
) -> dict:
    """Write ``audio_out`` (normalized FLAC) and ``info_out`` (status JSON); return the info.

    kind: "url" (this track's line of ``resolved_tsv``), "file", "stems" (a folder) or
    "demo" (a demo song's mixture or stems folder). Never raises for bad input: it writes
    an empty audio file and a failure status.
    """
    files = {"ingest": {"audio": Path(audio_out), "status": Path(info_out)}}
    job = {"track": track, "row": row, "kind": kind, "source": str(source),
           "resolved": resolved_tsv}
    return _ingest(Track(track, files, "ingest", provenance), job,
                   settings | {"downloads": downloads_dir})


def ingest_sheet(rows: list[tuple[str, str, str]], work: str | os.PathLike, settings: dict
                 ) -> list[dict]:
    """Ingest a sheet's ``rows`` (track, kind, source) outside the DAG, into ingest's layout
    under ``work``: a URL row becomes its entries (``track.001``, ...). The info of each
    track (``ok``, ``reason`` if not), with its row's ``source`` and its ``audio`` file."""
    work, infos = Path(work), []
    batch = Batch.of("ingest", work / "ingest.json")
    for name, kind, source in rows:
        jobs = [(name, None)]
        if kind == "url":
            resolved = work / "resolve" / f"{name}.tsv"
            resolve(name, source, resolved, settings["ytdlp"])
            jobs = [(line["track"], resolved) for line in read_resolved(resolved)]
        for track, resolved_tsv in jobs:
            files = batch.files(track)
            info = ingest(track, name, kind, source, files["audio"], files["status"], settings,
                          settings["downloads"], resolved_tsv)
            infos.append(info | {"track": track, "source": source, "audio": files["audio"]})
    return infos


def _ingest(track: Track, job: dict, settings: dict) -> dict:
    ids = {k: job[k] for k in ("row", "kind", "source")}
    return tracks.attempt(track, lambda: _read_source(track, job, settings), **ids)


def _read_source(track: Track, job: dict, s: dict) -> dict:
    """Decode the job's source into the track's audio file; its info."""
    kind, source = job["kind"], job["source"]
    info = {"ok": True, "stage": "ingest", "track": track.name, "row": job["row"],
            "kind": kind, "source": source, "uploader": None, "license": None, "stems": None}
    if kind == "url":
        audio, meta = _read_url(track.name, job["resolved"], s, info)
    elif kind == "file" or (kind == "demo" and not Path(source).is_dir()):
        path = Path(source)
        if not path.is_file():
            what = "not a file" if path.exists() else "file not found"
            raise io.TrackError(f"{what}: {source}")
        audio, meta = _read_file(path, s)
        info.update(title=path.stem, sha256=io.sha256_file(path))
    elif kind in ("stems", "demo"):
        audio, meta = _ingest_stems(Path(source), s)
        info.update(title=Path(source).name, sha256=meta["sha256"], stems=meta["stems"])
    else:
        raise io.TrackError(f"unknown ingest kind {kind!r} (url, file, stems or demo)")
    if kind == "demo":
        info.update(_demo_song(Path(source), track.name))
    info.update(
        duration=round(audio.shape[1] / s["sample_rate"], 3),
        sample_rate=s["sample_rate"],
        sample_rate_in=meta["sample_rate"],
        channels_in=meta["channels"],
    )
    io.write_audio(track.out["audio"], audio, s["sample_rate"])
    return info


def _read_url(name: str, resolved_tsv: str | None, s: dict, info: dict
              ) -> tuple[np.ndarray, dict]:
    """Download the URL this track resolved to and decode it; fills ``info``."""
    if resolved_tsv is None:
        raise io.TrackError("kind url needs the resolved TSV")
    entry = _find_track(resolved_tsv, name)
    if entry["error"]:
        raise io.TrackError(entry["error"])
    if s["downloads"] is None:
        raise io.TrackError("kind url needs a downloads folder")
    path, dl = download(entry["url"], s["downloads"], s)
    audio, meta = _read_file(path, s)
    info.update(url=entry["url"], title=entry["title"] or dl["title"], uploader=dl["uploader"],
                license=dl["license"], sha256=io.sha256_file(path))
    return audio, meta


def ingest_batch(jobs: list[dict], record: str | os.PathLike, settings: dict, shape: dict
                 ) -> list[dict]:
    """Ingest each job (track, row, kind, source, resolved) into the batch of ``record``
    (``tracks.LAYOUT``), keeping the tracks already ingested from the same source with the
    same ``shape`` (the settings that shape the audio). Returns the statuses in job order."""
    by_track = {j["track"]: j for j in jobs}
    provenances = {j["track"]: provenance("ingest", shape, j, _source_state(j)) for j in jobs}

    def work(todo: list[Track]) -> None:
        for track in tqdm(todo, desc="ingest", unit="track", disable=len(todo) < 2):
            _ingest(track, by_track[track.name], settings)

    return run_batch(Batch.of("ingest", record), provenances, work)


def _source_state(job: dict) -> Any:
    """What decides a track's audio besides the job: the entry its URL resolved to, or its
    source files' sizes and mtimes."""
    if job["kind"] == "url":
        try:
            return _find_track(job["resolved"], job["track"])
        except (OSError, TypeError, io.TrackError):
            return None
    source = Path(job["source"])
    paths = sorted(source.iterdir()) if source.is_dir() else [source]
    if job["kind"] == "demo":
        paths.append(source.parent / "truth.json")
    return fingerprint(paths)
