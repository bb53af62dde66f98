"""Shards: (context, target) token windows as WebDataset tars, a Parquet manifest, stats, plots.

Output is byte-identical across runs: samples are sorted, tar members carry fixed
metadata (mtime 0, uid 0), and nothing records the time of the run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from soloist.condition import shifted, tags_of
from soloist.io import RANDOM_WARNING, atomic_path, read_json, read_npy, write_json, write_png
from soloist.tracks import SPLITS, Batch, Track, original_of, split_of, track_of

log = logging.getLogger("soloist.shard")

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("track", pa.string()), ("row", pa.string()), ("split", pa.string()),
    ("shard", pa.string()), ("window", pa.int32()), ("start", pa.float64()),
    ("end", pa.float64()), ("frame_start", pa.int64()), ("frames", pa.int32()),
    ("active_fraction", pa.float32()), ("context_active_fraction", pa.float32()),
    ("target_rms_db", pa.float32()), ("context_rms_db", pa.float32()),
    ("title", pa.string()), ("source", pa.string()), ("weights", pa.string()),
    ("codec", pa.string()), ("variant", pa.string()), ("original_track", pa.string()),
    ("task", pa.string()), ("tags", pa.map_(pa.string(), pa.string())),
])
FAILURE_COLUMNS = ["track", "row", "source", "stage", "reason"]
CODEC_KEYS = ("model", "files", "sample_rate", "frame_rate", "codebooks",
              "cardinality", "latents", "weights")


def batch_files(ingested: list[str], clipped: list[str], tokenized: list[str],
                augmented: list[str] | None = None) -> list[Track]:
    """The files of every track of the batches, from their records (given batch by batch, in
    one order). A batch's tracks are the ones its ingest record lists, and their variants
    the ones its augment record lists (a variant's ingest files are its original's)."""
    tracks = []
    for i, records in enumerate(zip(ingested, clipped, tokenized, strict=True)):
        ingest, clip, tokenize = (Batch.of(stage, r) for stage, r in
                                  zip(("ingest", "clip", "tokenize"), records, strict=True))
        names = list(ingest.tracks())
        variants = list(Batch.of("augment", augmented[i]).tracks()) if augmented else []
        for later in (clip, tokenize):
            if sorted(later.tracks()) != sorted(names + variants):
                raise RuntimeError(f"{later.record} lists other tracks than {ingest.record}"
                                   f"{' and its variants' if variants else ''}: rerun with "
                                   f"-R {later.stage}")
        tracks += [track_of(t, ingest, clip, tokenize) for t in names]
        tracks += [Track(v, {"ingest": ingest.files(original_of(v)[0]), "clip": clip.files(v),
                             "tokenize": tokenize.files(v)}) for v in variants]
    return sorted(tracks, key=lambda t: t.name)


def _fill_empty_splits(splits: dict[str, str], hashed: set[str], fractions: dict[str, float]
                       ) -> list[str]:
    """Move hashed tracks into the splits with a non-zero fraction that got none, in place.

    ``splits`` holds the tracks that give samples; with few, the hash leaves a split empty
    (8 demo songs: no valid one). Each empty split takes the first hashed track, by id, of
    the split with the most tracks, if that one keeps at least one. Returns the splits still
    empty.
    """
    empty = []
    for split in SPLITS:
        if not fractions[split] or split in splits.values():
            continue
        counts = Counter(splits.values())
        donors = [s for s in SPLITS if counts[s] > 1
                  and any(splits[t] == s for t in hashed)]
        if not donors:
            empty.append(split)
            continue
        donor = max(donors, key=lambda s: counts[s])  # the first of equals, in SPLITS order
        track = min(t for t in hashed if splits[t] == donor)
        log.info("track %s moved from %s to %s, which had no track", track, donor, split)
        splits[track] = split
    return empty


def sample_key(track: str, window: int) -> str:
    # WebDataset takes everything after the first dot as the extension. '~' and '=' are in
    # no track id, so this mapping stays one-to-one: a.b -> a~b, a~p+2t0.90 -> a=p+2t0_90.
    original, variant = original_of(track)
    variant = "=" + variant.replace(".", "_") if variant else ""
    return f"{original.replace('.', '~')}{variant}~{window:05d}"


def shard(tracks: list[Track], out_dir: str | os.PathLike, failures_out: str | os.PathLike,
          explicit_splits: dict[str, str], settings: dict,
          variant_splits: tuple[str, ...] = ("train",), condition: dict | None = None) -> dict:
    """Write shards under ``out_dir/<split>/``, the manifest, stats, plots and failures, from
    ``tracks``' ingest, clip and tokenize files. A variant goes where its original goes, and
    only into ``variant_splits`` (augment.splits). ``condition``: the tag columns and the
    sheet's tags by row, {"columns": [...], "rows": {row: {column: value}}}; every sample
    gets its track's tags."""
    out_dir = Path(out_dir)
    found = _read(tracks, explicit_splits, settings["fractions"],
                  condition or {"columns": [], "rows": {}})
    # Only tracks that give samples fill a split: a track without windows trains nothing.
    splits = {t["track"]: t["split"] for t in found.per_track if t["windows"] and not t["variant"]}
    empty_splits = _fill_empty_splits(splits, found.hashed & set(splits), settings["fractions"])
    for t in found.per_track:
        t["split"] = splits.get(t["original"], found.first_split[t["original"]])
    split_of_track = {t["track"]: t["split"] for t in found.per_track}
    dropped = [t for t in found.per_track if t["variant"] and t["split"] not in variant_splits]
    for t in found.per_track:
        t["kept"] = t not in dropped
    out = {t["track"] for t in dropped}
    samples = [sample for track, info, row, windows, tokens, tags in found.usable
               if track.name not in out
               for sample in _track_samples(track, info, row, split_of_track[track.name],
                                            windows, tokens, tags)]
    manifest_rows = _write_tars(samples, out_dir, settings)
    with atomic_path(out_dir / "manifest.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(manifest_rows, schema=MANIFEST_SCHEMA), tmp)
    _write_failures(failures_out, found.failures)
    stats = _stats(tracks, found, samples, manifest_rows, empty_splits, dropped, settings)
    if stats["weights"] == "random":
        stats["warning"] = RANDOM_WARNING
        log.warning(RANDOM_WARNING)
    for warning in stats["warnings"]:
        log.warning(warning)
    _reconcile(stats)
    write_json(out_dir / "stats.json", stats)
    _plots(found.per_track, manifest_rows, out_dir / "plots")
    _dataset_plot(stats, manifest_rows, out_dir / "plots" / "dataset.png")
    _failures_page(found.failures, out_dir / "failures.html")
    for f in found.failures:
        log.warning("failed: %s at %s: %s", f["track"], f["stage"], f["reason"])
    log.info("%d tracks ok, %d failed, %d variants ok, %d samples", stats["tracks_ok"],
             stats["tracks_failed"], stats["variants"]["ok"], len(samples))
    return stats


def _reconcile(stats: dict) -> None:
    """Every track and variant is either ok or failed, and every window of an ok one is one
    sample, but for the windows of variants kept out of their original's split."""
    variants = stats["variants"]
    if stats["tracks_in"] != stats["tracks_ok"] + stats["tracks_failed"] or \
            variants["in"] != variants["ok"] + variants["failed"] or \
            stats["windows_in_clip_tables"] - variants["windows_dropped"] != \
            stats["samples_in_manifest"]:
        raise RuntimeError(f"counts do not reconcile: {json.dumps(stats)}")


@dataclass
class _Found:
    """What the tracks' files say, before anything is written."""

    failures: list[dict] = field(default_factory=list)
    per_track: list[dict] = field(default_factory=list)  # the tracks that did not fail
    usable: list[tuple] = field(default_factory=list)  # (track, info, row, windows, tokens, tags)
    hashed: set[str] = field(default_factory=set)  # tracks whose split the hash chose
    first_split: dict[str, str] = field(default_factory=dict)  # sheet's or hash's, by track
    codec: dict = field(default_factory=dict)  # codebooks, frame rate...: any tokens status
    scores: list[dict] = field(default_factory=list)  # demo songs' clip scores
    windows: int = 0  # in the clip tables of the tracks that did not fail


def _read(tracks: list[Track], explicit_splits: dict[str, str], fractions: dict[str, float],
          condition: dict) -> _Found:
    found = _Found()
    for track in sorted(tracks, key=lambda t: t.name):
        original, variant = original_of(track.name)
        info = read_json(track["ingest"]["status"])
        row = info.get("row", original)
        if not variant:
            found.first_split[original] = explicit_splits.get(row) or split_of(original,
                                                                              fractions)
            if not explicit_splits.get(row):
                found.hashed.add(original)
        clip_status = read_json(track["clip"]["status"])
        tokens_status = read_json(track["tokenize"]["status"])
        bad = next((s for s in (clip_status, tokens_status) if not s["ok"]), None)
        if bad is not None:
            found.failures.append({"track": track.name, "row": row,
                                   "source": info.get("source", ""), "stage": bad["stage"],
                                   "reason": bad["reason"]})
            continue
        windows = pq.read_table(track["clip"]["windows"]).to_pylist()
        found.windows += len(windows)
        found.codec = found.codec or tokens_status
        tags = tags_of(condition["rows"].get(row, {}), info.get("truth_tags", {}),
                       condition["columns"])
        if variant:  # in another key, at another tempo
            tags = shifted(tags, variant)
        found.per_track.append({"track": track.name, "original": original, "variant": variant,
                                "split": found.first_split[original], "windows": len(windows),
                                "duration": clip_status["duration"],
                                "active_seconds": clip_status["active_seconds"], "tags": tags})
        whole = tokens_status.get("roles") == ["mix"]  # task continuation: no solo chosen
        if info.get("solo_intervals") is not None and not variant and not whole:  # the truth
            found.scores.append(_selection_scores(track.name, clip_status["active_intervals"],
                                                  windows, info["solo_intervals"]))
        if windows:
            found.usable.append((track, info, row, windows, tokens_status, tags))
    return found


def _stats(tracks: list[Track], found: _Found, samples: list[dict], manifest_rows: list[dict],
           empty_splits: list[str], dropped: list[dict], settings: dict) -> dict:
    per_track, codec = found.per_track, found.codec
    weights = {s["weights"] for s in samples} or {"none"}
    splits = {t["track"] for t in per_track if t["windows"] and not t["variant"]}
    is_variant = {t.name: bool(original_of(t.name)[1]) for t in tracks}
    failed = [f for f in found.failures if not is_variant[f["track"]]]
    return {
        "tracks_in": sum(not v for v in is_variant.values()),
        "tracks_ok": sum(not t["variant"] for t in per_track), "tracks_failed": len(failed),
        "windows_in_clip_tables": found.windows, "samples_in_manifest": len(manifest_rows),
        "tracks_without_windows": [t["track"] for t in per_track if t["windows"] == 0],
        "weights": "random" if "random" in weights else sorted(weights)[0],
        "codebooks": codec.get("codebooks"), "cardinality": codec.get("cardinality"),
        "frame_rate": codec.get("frame_rate"),
        # which codec made the tokens, so that a model reads the tokens it was trained on
        "codec": {k: codec.get(k) for k in CODEC_KEYS},
        "splits": {
            split: {
                "tracks": sum(t["split"] == split and not t["variant"] for t in per_track),
                "samples": sum(r["split"] == split for r in manifest_rows),
                "variant_samples": sum(r["split"] == split and bool(r["variant"])
                                       for r in manifest_rows),
                "seconds": round(sum(r["end"] - r["start"] for r in manifest_rows
                                     if r["split"] == split), 3),
                "shards": len({r["shard"] for r in manifest_rows if r["split"] == split}),
            } for split in SPLITS
        },
        "variants": {
            "in": sum(is_variant.values()), "ok": sum(bool(t["variant"]) for t in per_track),
            "failed": len(found.failures) - len(failed),
            # a variant of a track that went to a split without variants (a split left empty
            # by the hash takes a track: its variants were made before that was known)
            "dropped": [{"track": t["track"], "split": t["split"]} for t in dropped],
            "windows_dropped": sum(t["windows"] for t in dropped),
        },
        "per_track": per_track,
        "clip_vs_truth": _total_scores(found.scores),
        "empty_splits": empty_splits,
        "warnings": [f"split {split!r} (fraction {settings['fractions'][split]:g}) has no "
                     f"track: too few tracks give samples ({len(splits)})"
                     for split in empty_splits],
    }


def _union(intervals: list[list[float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in sorted(map(tuple, intervals)):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _overlap(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in x for c, d in y)


def _selection_scores(track: str, active: list[list[float]], windows: list[dict],
                      truth: list[list[float]]) -> dict:
    """Seconds the clip stage marked as soloing, the truth's solo seconds, and how much of
    each agrees; also how much of the selected windows' time the solo really plays."""
    active, truth = _union(active), _union(truth)
    spans = _union([[w["start"], w["end"]] for w in windows])
    return {"track": track, "active": sum(b - a for a, b in active),
            "truth": sum(b - a for a, b in truth), "both": _overlap(active, truth),
            "windows": sum(b - a for a, b in spans), "windows_in_solo": _overlap(spans, truth)}


def _total_scores(scores: list[dict]) -> dict | None:
    """Precision, recall and F1 of the soloing time over all demo tracks (their seconds
    summed), and per track; None when no track has a known truth."""
    def prf(s: dict) -> dict:
        precision = s["both"] / s["active"] if s["active"] else 0.0
        recall = s["both"] / s["truth"] if s["truth"] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        window_precision = s["windows_in_solo"] / s["windows"] if s["windows"] else None
        return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                "window_precision": None if window_precision is None
                else round(window_precision, 4)}

    if not scores:
        return None
    total = {k: sum(s[k] for s in scores) for k in ("active", "truth", "both", "windows",
                                                     "windows_in_solo")}
    return {"tracks": len(scores), **prf(total),
            "per_track": [{"track": s["track"], **prf(s)} for s in scores]}


def _track_samples(track: Track, info: dict, row: str, split: str, windows: list[dict],
                   tokens_status: dict, tags: dict[str, str]) -> list[dict]:
    """A sample per window: its context and target codes [K, frames] and what it is. A
    recording tokenized whole (task: continuation) gives a window's first half as the
    context and its second half, what comes next, as the target."""
    whole = tokens_status.get("roles") == ["mix"]
    roles = ("mix", "mix") if whole else ("context", "target")
    context, target = (read_npy(track["tokenize"][role]) for role in roles)
    rate = tokens_status["frame_rate"]
    samples = []
    for w in windows:
        frames = round((w["end"] - w["start"]) * rate)
        start = min(round(w["start"] * rate), context.shape[1] - frames)
        next_start = start
        if whole:
            frames //= 2
            next_start = start + frames
        original, variant = original_of(track.name)
        meta = {**w, "key": sample_key(track.name, w["window"]), "row": row, "split": split,
                "frame_start": start, "frames": frames, "frame_rate": rate,
                "title": info.get("title") or original, "source": info.get("source", ""),
                "weights": tokens_status["weights"], "codec": tokens_status["model"],
                "variant": variant, "original_track": original,
                "task": "continuation" if whole else "solo", "tags": tags}
        samples.append({**meta, "context": context[:, start:start + frames],
                        "target": target[:, next_start:next_start + frames]})
    return samples


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _write_tars(samples: list[dict], out_dir: Path, settings: dict) -> list[dict]:
    """Write sorted samples into size-limited tars per split; returns manifest rows."""
    rows = []
    for split in SPLITS:
        folder = out_dir / split
        shutil.rmtree(folder, ignore_errors=True)  # no stale shards from an earlier run
        folder.mkdir(parents=True)
        chunk: list[tuple[str, bytes]] = []
        n_samples, index = 0, 0
        for s in (s for s in samples if s["split"] == split):
            meta = {k: v for k, v in s.items() if k not in ("context", "target")}
            members = [(f"{s['key']}.context.npy", _npy_bytes(s["context"])),
                       (f"{s['key']}.target.npy", _npy_bytes(s["target"])),
                       (f"{s['key']}.json", json.dumps(meta, sort_keys=True).encode())]
            size = sum(len(b) + 1024 for _, b in members)
            if n_samples and (n_samples >= settings["max_samples"] or
                              sum(len(b) + 1024 for _, b in chunk) + size > settings["max_bytes"]):
                _write_tar(folder / f"shard-{index:06d}.tar", chunk)
                chunk, n_samples, index = [], 0, index + 1
            chunk.extend(members)
            n_samples += 1
            rows.append({k: meta[k] for k in MANIFEST_SCHEMA.names if k != "shard"}
                        | {"shard": f"{split}/shard-{index:06d}.tar"})
        if chunk:
            _write_tar(folder / f"shard-{index:06d}.tar", chunk)
    return rows


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))


def _write_failures(path: str | os.PathLike, failures: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, FAILURE_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for row in failures:
            writer.writerow({k: " ".join(str(row[k]).split()) for k in FAILURE_COLUMNS})


def _plots(per_track: list[dict], rows: list[dict], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = sorted({t["original"] for t in per_track})
    kinds = {"the track": Counter(), "its pitch/tempo variants": Counter(),
             "variants left out (their track left the split)": Counter()}
    for t in per_track:
        kind = list(kinds)[0 if not t["variant"] else 1 if t["kept"] else 2]
        kinds[kind][t["original"]] += t["windows"]

    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names)), 4))
    bottom = [0] * len(names)
    for (label, counts), color in zip(kinds.items(), ("#1f77b4", "#e8a33d", "#bbbbbb"),
                                      strict=True):
        if counts or label == "the track":
            heights = [counts[n] for n in names]
            ax.bar(range(len(names)), heights, bottom=bottom, label=label, color=color)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if len(kinds["its pitch/tempo variants"]) or len(kinds[list(kinds)[2]]):
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set(title="Clips per track", ylabel="windows")
    write_png(folder / "clips_per_track.png", fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for column in ("target_rms_db", "context_rms_db"):
        ax.hist([r[column] for r in rows], bins=40, alpha=0.6, label=column.split("_")[0])
    ax.set(title="RMS of the selected windows", xlabel="dBFS", ylabel="windows")
    ax.legend()
    write_png(folder / "rms.png", fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist([[t["duration"] for t in per_track], [t["active_seconds"] for t in per_track]],
            bins=20, label=["track duration", "soloist active"])
    ax.set(title="Durations", xlabel="seconds", ylabel="tracks")
    ax.legend()
    write_png(folder / "durations.png", fig)


def _dataset_plot(stats: dict, rows: list[dict], path: Path) -> None:
    """Tracks in, ok and failed; hours per split (of tracks and of their variants); clip
    selection against the demo truth."""
    import matplotlib.pyplot as plt

    scores = stats["clip_vs_truth"]
    fig, axes = plt.subplots(1, 3 if scores else 2, figsize=(13 if scores else 9, 3.6))
    bars = {k: stats[f"tracks_{k}"] for k in ("in", "ok", "failed")}
    axes[0].bar(list(bars), list(bars.values()), color=["#888", "#2a7", "#c33"])
    axes[0].set(title="Tracks", ylabel="tracks")
    hours = {kind: [sum(r["end"] - r["start"] for r in rows
                        if r["split"] == split and bool(r["variant"]) == kind) / 3600
                    for split in SPLITS] for kind in (False, True)}
    axes[1].bar(SPLITS, hours[False], label="tracks")
    if any(hours[True]):
        axes[1].bar(SPLITS, hours[True], bottom=hours[False], label="variants", color="#e8a33d")
        axes[1].legend(fontsize=7)
    axes[1].set(title="Hours of windows per split", ylabel="hours")
    if scores:
        names = [t["track"] for t in scores["per_track"]]
        for i, key in enumerate(("precision", "recall", "f1")):
            axes[2].bar([j + 0.27 * (i - 1) for j in range(len(names))],
                        [t[key] for t in scores["per_track"]], width=0.27, label=key)
        axes[2].set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        axes[2].set(title=f"Soloing time vs the demo truth (F1 {scores['f1']:.3f})",
                    ylim=(0, 1.05))
        axes[2].legend(fontsize=7, loc="lower right")
    write_png(path, fig)


def _failures_page(failures: list[dict], path: Path) -> None:
    """failures.tsv as a page (the report shows pages, not tables)."""
    import html

    head = "".join(f"<th>{c}</th>" for c in FAILURE_COLUMNS)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(f[c]))}</td>"
                                    for c in FAILURE_COLUMNS) + "</tr>" for f in failures)
    body = f"<table><tr>{head}</tr>{rows}</table>" if failures else "<p>No track failed.</p>"
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>failed tracks</title>'
            f"<style>body{{font-family:sans-serif}} td,th{{padding:3px 8px;text-align:left;"
            f"vertical-align:top}}</style></head><body><h1>{len(failures)} failed tracks"
            f"</h1>{body}</body></html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text(page)
