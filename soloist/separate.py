"""Stem separation: Demucs (or given stems) -> a context (backing) and a target (solo) track."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from soloist.io import (
    Background,
    Clock,
    failed,
    first_failure,
    io_pool,
    io_workers,
    prefetch,
    read_audio,
    read_json,
    touch_empty,
    write_audio,
    write_json,
)
from soloist.tracks import Batch, provenance, run_batch

log = logging.getLogger("soloist.separate")
Audio = np.ndarray | torch.Tensor
PIECE_SECONDS = 10.0  # tracks are decoded in pieces of this length in parallel, a track at a time
# compile: auto compiles a job of at least this much audio (s), where a cold compile pays
# for itself (BENCHMARKS.md): on an H200 ~2 min for 1.6 ms saved per audio-second, on 2 CPU
# cores ~2 min for 0.08-0.15 s
COMPILE_MIN_AUDIO = {"cuda": 20 * 3600, "cpu": 30 * 60}
# batch_size: auto fits the GPU it gets: HTDemucs' peak memory per batch row, per sample of
# its window, bf16 or fp32 alike (an H200, torch 2.11; BENCHMARKS.md)
DEMUCS_PEAK_BYTES = 1380


@dataclass
class Item:
    """One track to separate: its ingest outputs in, context/target/status out."""

    track: str
    audio: Path
    info: Path
    context: Path
    target: Path
    status: Path
    stems_dir: Path | None = None  # where all stems go when keep_stems is set
    provenance: str | None = None  # what made it (tracks.provenance), in its status


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fit_batch(most: int, item_bytes: float, free_bytes: float) -> int:
    """``most``, or as many items as fit in 70% of ``free_bytes`` when each one needs
    ``item_bytes`` at the forward pass's peak; at least 1."""
    return max(1, min(most, int(0.7 * free_bytes / item_bytes)))


def out_of_memory(stage: str, batch_size: int) -> RuntimeError:
    """The error for a batch the GPU had no room for, naming the setting to lower."""
    return RuntimeError(f"the GPU ran out of memory for a batch of {batch_size}: set "
                        f"{stage}.batch_size lower than {batch_size} (auto fits an idle GPU)")


def mix_roles(stems: dict[str, Audio], context: list[str], target: list[str]
              ) -> tuple[Audio, Audio]:
    """Sum ``stems`` {name: [C, N]} (numpy or torch) into (context, target) by role; raises
    if a role is empty."""
    for role, names in (("context", context), ("target", target)):
        if not any(n in stems for n in names):
            raise ValueError(f"none of the {role} stems {names} is present (have {sorted(stems)})")
    pick = [sum(stems[n] for n in names if n in stems) for names in (context, target)]
    return pick[0], pick[1]


def pcm16(audio: Audio) -> np.ndarray:
    """Host samples for ``write_audio``: a tensor is clipped and rounded to int16 where it
    is (as libsndfile would round it), so a GPU sends a quarter of the float32 stems."""
    if isinstance(audio, np.ndarray):
        return audio
    return (audio.clamp(-1, 1) * 32767).round().to(torch.int16).cpu().numpy()


def separate_batch(ingested: str | os.PathLike, record: str | os.PathLike, settings: dict,
                   shape: dict, weights: str | os.PathLike | None, sample_rate: int
                   ) -> list[dict]:
    """Separate every track of an ingest batch (its record) into the batch of ``record``,
    keeping the tracks already separated from the same ingest with the same ``shape`` (the
    settings that shape the stems) and weights."""
    upstream, out = Batch.of("ingest", ingested), Batch.of("separate", record)
    model = read_json(weights) if weights else None
    provenances = {t: provenance("separate", shape, model, p)
                   for t, p in upstream.tracks().items()}

    def item(track: str) -> Item:
        i, o = upstream.files(track), out.files(track)
        return Item(track, i["audio"], i["status"], o["context"], o["target"], o["status"],
                    out.dir / track / "stems", provenances[track])

    return run_batch(out, provenances, lambda todo: separate([item(t) for t in todo], settings,
                                                             weights, sample_rate))


def separate(items: list[Item], settings: dict, weights: str | os.PathLike | None,
             sample_rate: int) -> list[dict]:
    """Separate ``items`` with one Demucs model, loaded once, when the first item needs it.

    Items ingested from a stems folder use the given stems. ``settings`` is the config's
    ``separate`` section (roles, shifts, overlap, segment, batch_size, precision, compile,
    device, keep_stems). Segments of all tracks are batched through the model while the
    next tracks are read and the finished ones written in threads. Bad input never
    raises: the item gets a failed status. Returns the statuses in item order.
    """
    weights_random = weights is not None and read_json(weights)["random"]
    label = "random" if weights_random else "pretrained"
    statuses: dict[str, dict] = {}
    demucs_items = []
    for item in items:
        upstream = first_failure(item.info)
        if upstream:
            statuses[item.track] = _finish(item, upstream)
        elif read_json(item.info).get("stems"):  # ingested from a stems folder
            try:
                stems = _given_stems(item, sample_rate)
            except Exception as e:  # one bad track must not stop the others
                statuses[item.track] = _fail(item, e)
                continue
            statuses[item.track] = _write(item, settings, sample_rate, "given stems", stems)
        elif weights is None:
            statuses[item.track] = _fail(item, ValueError(
                "no Demucs weights given for a track that needs separation"))
        else:
            demucs_items.append(item)
    if demucs_items:
        from soloist.fetch_weights import load_demucs

        device, clock = pick_device(settings["device"]), Clock()
        reads = prefetch(lambda i: read_audio(i.audio, PIECE_SECONDS), demucs_items)
        with clock("model load"):  # while the first tracks are read
            model = load_demucs(weights, device)
        compiled = _compile(settings["compile"], device, demucs_items)
        with Background(io_workers(), limit=io_workers()) as writer:
            futures = {}
            bar = tqdm(total=len(demucs_items), desc="separate", unit="track",
                       disable=len(demucs_items) < 2)
            for item, stems, error in demix(model, reads, settings, sample_rate, device,
                                            clock, compiled):
                if error is None:
                    with clock("waiting for writes"):
                        futures[item.track] = writer.submit(_write, item, settings, sample_rate,
                                                            label, stems)
                else:
                    statuses[item.track] = _fail(item, error)
                bar.update()
            bar.close()
            with clock("waiting for writes"):
                writer.close()
        log.info("separated %d tracks in %s", len(demucs_items), clock)
        statuses |= {track: f.result() for track, f in futures.items()}
    return [statuses[item.track] for item in items]


def _write(item: Item, settings: dict, sample_rate: int, weights: str,
           stems: dict[str, Audio]) -> dict:
    """Mix ``stems`` into the roles and write them; the status (never raises)."""
    try:
        context, target = mix_roles(stems, settings["context"], settings["target"])
        files = [(item.context, context), (item.target, target)]
        if settings["keep_stems"] and item.stems_dir is not None:
            files += [(item.stems_dir / f"{name}.flac", a) for name, a in stems.items()]
        # FLAC encoding is the slow part of writing: one thread per file. The samples are
        # made here: torch ops in the process-wide pool's threads would keep an OpenMP team
        # alive in each, and on a CPU every later parallel region would wait on them
        files = [(path, pcm16(audio)) for path, audio in files]
        list(io_pool().map(lambda f: write_audio(f[0], f[1], sample_rate), files))
        status = {"ok": True, "stage": "separate", "track": item.track, "stems": sorted(stems),
                  "weights": weights,
                  "unused_stems": sorted(set(stems) - set(settings["context"])
                                         - set(settings["target"]))}
    except Exception as e:  # one bad track must not stop the others
        return _fail(item, e)
    return _finish(item, status)


def _fail(item: Item, error: Exception) -> dict:
    log.error("separate failed for %s: %s: %s", item.track, type(error).__name__, error)
    return _finish(item, failed("separate", f"{type(error).__name__}: {error}",
                                track=item.track))


def _finish(item: Item, status: dict) -> dict:
    if not status["ok"]:
        touch_empty(item.context, item.target)
    status = status | {"provenance": item.provenance}
    write_json(item.status, status)
    return status


def _given_stems(item: Item, sample_rate: int) -> dict[str, np.ndarray]:
    from soloist.ingest import load_audio, stem_files

    folder = Path(read_json(item.info)["source"])
    return {name: load_audio(path, sample_rate) for name, path in stem_files(folder).items()}


@dataclass
class _Pass:
    """One pass of the model over one track: its (shifted) input and what has come back."""

    track: _Track
    x: torch.Tensor       # [C, L] normalised mix, left-padded by ``pad`` zeros (the shift)
    pad: int
    out: torch.Tensor     # [S, C, L] weighted sum of segment outputs
    weight: torch.Tensor  # [L] sum of segment weights
    left: int             # segments still to come back


@dataclass
class _Track:
    item: Item
    mean: torch.Tensor
    std: torch.Tensor
    n: int                # samples
    passes: list[_Pass]
    left: int             # passes still to finish


@torch.inference_mode()
def demix(model: torch.nn.Module,
          reads: Iterable[tuple[Item, tuple[np.ndarray, int] | None, Exception | None]],
          settings: dict, sample_rate: int, device: torch.device, clock: Clock | None = None,
          compiled: bool = False) -> Iterator[tuple[Item, dict | None, Exception | None]]:
    """Yield ``(item, {stem: [C, N] float32 on device}, None)`` or ``(item, None, error)``
    for each ``(item, (mix [C, N], sample rate), None)`` or ``(item, None, error)`` read.

    The same arithmetic as ``demucs.apply.apply_model`` (the CLI's normalisation, random
    shifts drawn from ``random`` seeded by the track id, segments with ``overlap`` blended
    by triangular weights, each padded to the model's training length with the
    neighbouring samples), but segments of consecutive tracks share forward passes of
    ``batch_size`` segments [B, C, W]. With ``compiled`` the forward is ``torch.compile``d
    for that one shape (every batch, the last one too, is padded to ``batch_size``); if
    compiling fails, a warning says why and the eager model takes over.
    """
    from demucs.apply import BagOfModels

    if isinstance(model, BagOfModels):  # what demucs' loaders return, here a bag of one
        if len(model.models) != 1:
            raise ValueError(f"a bag of {len(model.models)} Demucs models is not supported")
        model = model.models[0]
    seg = int(model.samplerate * (settings["segment"] or float(model.segment)))
    stride = int((1 - settings["overlap"]) * seg)
    window = model.valid_length(seg) if hasattr(model, "valid_length") else seg
    ramp = torch.cat([torch.arange(1, seg // 2 + 1), torch.arange(seg - seg // 2, 0, -1)])
    ramp = (ramp / ramp.max()).to(device)
    batch_size = _batch_size(settings["batch_size"], device, window)
    autocast = _autocast(settings["precision"], device)
    max_shift = int(0.5 * model.samplerate)
    clock = clock or Clock()
    queue: list[tuple[_Pass, int, int]] = []  # (pass, segment offset, segment length)
    forward = torch.compile(model, dynamic=False) if compiled else model
    span = "compiling" if compiled else "model"  # the first compiled call compiles

    def run(batch: list[tuple[_Pass, int, int]]) -> Iterator[_Track]:
        """One forward pass; yields the tracks it completes."""
        nonlocal forward, span
        rows = batch_size if forward is not model else len(batch)
        x = torch.zeros(rows, batch[0][0].x.shape[0], window, device=device)
        for j, (p, offset, length) in enumerate(batch):
            start = offset - (window - length) // 2  # centred in the window, as demucs pads
            lo, hi = max(start, 0), min(start + window, p.x.shape[1])
            x[j, :, lo - start:hi - start] = p.x[:, lo:hi]
        with clock(span), autocast:
            try:
                y = forward(x).float()  # [B, S, C, W]
            except torch.cuda.OutOfMemoryError as e:
                raise out_of_memory("separate", batch_size) from e
            except Exception as e:
                if forward is model:
                    raise
                log.warning("torch.compile of Demucs failed, separating without it: %s: %s",
                            type(e).__name__, e)
                forward = model
                y = model(x).float()
        span = "model"
        for j, (p, offset, length) in enumerate(batch):
            trim = (window - length) // 2
            p.out[..., offset:offset + length] += ramp[:length] * y[j, ..., trim:trim + length]
            p.weight[offset:offset + length] += ramp[:length]
            p.left -= 1
            if p.left == 0:
                p.track.left -= 1
                if p.track.left == 0:
                    yield p.track

    def finished(track: _Track) -> dict[str, torch.Tensor]:
        out = sum(p.out[..., p.pad:p.pad + track.n] / p.weight[p.pad:p.pad + track.n]
                  for p in track.passes) / len(track.passes)
        out = out * track.std + track.mean
        return {name: out[i] for i, name in enumerate(model.sources)}

    for item, audio, error in clock.iter("waiting for audio", reads):
        try:
            if error is not None:
                raise error
            mix, rate = audio
            if mix.shape[1] == 0:
                raise ValueError(f"{item.audio} has no samples")
            if rate != model.samplerate or rate != sample_rate:
                raise ValueError(f"{item.audio} is {rate} Hz; the model wants "
                                 f"{model.samplerate} Hz")
            mix = torch.from_numpy(mix).to(device)
            ref = mix.mean(0)  # normalised like the demucs CLI, undone at the end
            track = _Track(item, ref.mean(), ref.std() + 1e-8, mix.shape[1], [], 0)
            mix = (mix - track.mean) / track.std
            random.seed(item.track)  # demucs draws its shifts from `random`: reproducible
            pads = [max_shift - random.randint(0, max_shift)
                    for _ in range(settings["shifts"])] or [0]
        except Exception as e:  # one bad track must not stop the others
            yield item, None, e
            continue
        for pad in pads:
            x = torch.nn.functional.pad(mix, (pad, 0))
            offsets = range(0, x.shape[1], stride)
            p = _Pass(track, x, pad, torch.zeros(len(model.sources), *x.shape, device=device),
                      torch.zeros(x.shape[1], device=device), len(offsets))
            track.passes.append(p)
            queue += [(p, o, min(seg, x.shape[1] - o)) for o in offsets]
        track.left = len(pads)
        while len(queue) >= batch_size:
            batch, queue = queue[:batch_size], queue[batch_size:]
            yield from ((done.item, finished(done), None) for done in run(batch))
    for b in range(0, len(queue), batch_size):
        yield from ((done.item, finished(done), None) for done in run(queue[b:b + batch_size]))


def _batch_size(setting: int | str, device: torch.device, window: int) -> int:
    # On a CPU a batch of segments runs slower per segment than one at a time (BENCHMARKS.md)
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 1
    size = fit_batch(16, window * DEMUCS_PEAK_BYTES, torch.cuda.mem_get_info(device)[0])
    log.info("batches of %d segments (separate.batch_size: auto)", size)
    return size


def _compile(setting: bool | str, device: torch.device, items: list[Item]) -> bool:
    """Whether to compile the forward: only when the job holds enough audio (ingest's
    durations) to pay for the compile (BENCHMARKS.md)."""
    if setting == "auto":
        seconds = sum(read_json(i.info).get("duration", 0) for i in items)
        return seconds >= COMPILE_MIN_AUDIO.get(device.type, math.inf)
    return bool(setting)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, torch.bfloat16)
    return contextlib.nullcontext()
