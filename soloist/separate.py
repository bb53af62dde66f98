"""Stem separation: Demucs (or given stems) -> a context (backing) and a target (solo) track.

A per-track stage (soloist.tracks): each track's mix is read from ingest's files and its
context, target (and with ``keep_stems`` every stem) written where ``tracks.LAYOUT`` says.
"""

from __future__ import annotations

import functools
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

from soloist import device as devices
from soloist import io
from soloist.io import Background, Clock, io_pool, read_json, write_audio
from soloist.tracks import Batch, Track, attempt, fail, provenance, run_batch

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


def mix_roles(stems: dict[str, Audio], context: list[str], target: list[str]
              ) -> tuple[Audio, Audio]:
    """Sum ``stems`` {name: [C, N]} (numpy or torch) into (context, target) by role; raises
    if a role is empty."""
    for role, names in (("context", context), ("target", target)):
        if not any(n in stems for n in names):
            raise ValueError(f"none of the {role} stems {names} is present (have {sorted(stems)})")
    pick = [sum(stems[n] for n in names if n in stems) for names in (context, target)]
    return pick[0], pick[1]


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
    return run_batch(out, provenances, lambda todo: separate(todo, settings, weights,
                                                             sample_rate), upstream)


def separate(tracks: list[Track], settings: dict, weights: str | os.PathLike | None,
             sample_rate: int) -> list[dict]:
    """Separate ``tracks`` (ingested, each with its ``separate`` files to write) with one
    Demucs model, loaded once, when the first track needs it.

    Tracks ingested from a stems folder use the given stems. ``settings`` is the config's
    ``separate`` section (roles, shifts, overlap, segment, batch_size, precision, compile,
    device, keep_stems). Segments of all tracks are batched through the model while the
    next tracks are read and the finished ones written in threads. Bad input never
    raises: the track gets a failed status. Returns the statuses in track order.
    """
    statuses: dict[str, dict] = {}
    demucs = []
    for track in tracks:
        info = read_json(track["ingest"]["status"])
        if info.get("stems"):  # ingested from a stems folder
            statuses[track.name] = attempt(track, functools.partial(
                _write_given, track, info["source"], settings, sample_rate))
        elif weights is None:
            statuses[track.name] = fail(track, ValueError(
                "no Demucs weights given for a track that needs separation"))
        else:
            demucs.append(track)
    if demucs:
        statuses |= _with_demucs(demucs, settings, weights, sample_rate)
    return [statuses[track.name] for track in tracks]


def _with_demucs(tracks: list[Track], settings: dict, weights: str | os.PathLike,
                 sample_rate: int) -> dict[str, dict]:
    """Separate ``tracks`` with the Demucs model of ``weights``: {track: status}."""
    from soloist.weights import load_demucs

    label = "random" if read_json(weights)["random"] else "pretrained"
    device, clock = devices.pick_device(settings["device"]), Clock()
    reads = io.prefetch(lambda t: io.read_audio(t["ingest"]["audio"], PIECE_SECONDS), tracks)
    with clock("model load"):  # while the first tracks are read
        model = load_demucs(weights, device)
    compiled = _compile(settings["compile"], device, tracks)
    statuses, futures = {}, {}
    with Background(io.io_workers(), limit=io.io_workers()) as writer:
        bar = tqdm(total=len(tracks), desc="separate", unit="track", disable=len(tracks) < 2)
        for track, stems, error in demix(model, reads, settings, sample_rate, device, clock,
                                         compiled):
            if error is None:
                write = functools.partial(_write, track, settings, sample_rate, label, stems)
                with clock("waiting for writes"):
                    futures[track.name] = writer.submit(attempt, track, write)
            else:
                statuses[track.name] = fail(track, error)
            bar.update()
        bar.close()
        with clock("waiting for writes"):
            writer.close()
    log.info("separated %d tracks in %s", len(tracks), clock)
    return statuses | {name: f.result() for name, f in futures.items()}


def _write(track: Track, settings: dict, sample_rate: int, weights: str,
           stems: dict[str, Audio]) -> dict:
    """Mix ``stems`` into the roles and write them; the status."""
    out = track.out
    context, target = mix_roles(stems, settings["context"], settings["target"])
    files = [(out["context"], context), (out["target"], target)]
    if settings["keep_stems"] and "stems" in out:
        files += [(out["stems"] / f"{name}.flac", a) for name, a in stems.items()]
    # FLAC encoding is the slow part of writing: one thread per file. The samples are
    # made here: torch ops in the process-wide pool's threads would keep an OpenMP team
    # alive in each, and on a CPU every later parallel region would wait on them
    files = [(path, devices.pcm16(audio)) for path, audio in files]
    list(io_pool().map(lambda f: write_audio(f[0], f[1], sample_rate), files))
    return {"ok": True, "stage": "separate", "track": track.name, "stems": sorted(stems),
            "weights": weights,
            "unused_stems": sorted(set(stems) - set(settings["context"])
                                   - set(settings["target"]))}


def _write_given(track: Track, folder: str, settings: dict, sample_rate: int) -> dict:
    """Mix and write the stems of a stems folder; the status."""
    stems = {name: io.load_audio(path, sample_rate)
             for name, path in io.stem_files(Path(folder)).items()}
    return _write(track, settings, sample_rate, "given stems", stems)


@dataclass
class _Pass:
    """One pass of the model over one track: its (shifted) input and what has come back."""

    song: _Song
    x: torch.Tensor       # [C, L] normalised mix, left-padded by ``pad`` zeros (the shift)
    pad: int
    out: torch.Tensor     # [S, C, L] weighted sum of segment outputs
    weight: torch.Tensor  # [L] sum of segment weights
    left: int             # segments still to come back


@dataclass
class _Song:
    """One track being separated: the normalisation to undo and its passes (one a shift)."""

    track: Track
    mean: torch.Tensor
    std: torch.Tensor
    n: int                # samples
    passes: list[_Pass]
    left: int             # passes still to finish


@torch.inference_mode()
def demix(model: torch.nn.Module,
          reads: Iterable[tuple[Track, tuple[np.ndarray, int] | None, Exception | None]],
          settings: dict, sample_rate: int, device: torch.device, clock: Clock | None = None,
          compiled: bool = False) -> Iterator[tuple[Track, dict | None, Exception | None]]:
    """Yield ``(track, {stem: [C, N] float32 on device}, None)`` or ``(track, None, error)``
    for each ``(track, (mix [C, N], sample rate), None)`` or ``(track, None, error)`` read.

    The same arithmetic as ``demucs.apply.apply_model`` (the CLI's normalisation, random
    shifts drawn from ``random`` seeded by the track id, segments with ``overlap`` blended
    by triangular weights, each padded to the model's training length with the
    neighbouring samples), but segments of consecutive tracks share forward passes of
    ``batch_size`` segments [B, C, W]. With ``compiled`` the forward is ``torch.compile``d
    for that one shape (every batch, the last one too, is padded to ``batch_size``); if
    compiling fails, a warning says why and the eager model takes over.
    """
    demixer = _Demixer(model, settings, device, clock or Clock(), compiled)
    for track, audio, error in demixer.clock.iter("waiting for audio", reads):
        try:
            if error is not None:
                raise error
            demixer.add(track, *audio, sample_rate)
        except Exception as e:  # one bad track must not stop the others
            yield track, None, e
            continue
        yield from demixer.full_batches()
    yield from demixer.flush()


class _Demixer:
    """One Demucs model's segments, queued across tracks and run in batches [B, C, W]."""

    def __init__(self, model: torch.nn.Module, settings: dict, device: torch.device,
                 clock: Clock, compiled: bool):
        from demucs.apply import BagOfModels

        if isinstance(model, BagOfModels):  # what demucs' loaders return, here a bag of one
            if len(model.models) != 1:
                raise ValueError(f"a bag of {len(model.models)} Demucs models is not supported")
            model = model.models[0]
        self.model, self.device, self.clock, self.shifts = model, device, clock, settings["shifts"]
        self.seg = int(model.samplerate * (settings["segment"] or float(model.segment)))
        self.stride = int((1 - settings["overlap"]) * self.seg)
        self.window = model.valid_length(self.seg) if hasattr(model, "valid_length") else self.seg
        seg = self.seg
        ramp = torch.cat([torch.arange(1, seg // 2 + 1), torch.arange(seg - seg // 2, 0, -1)])
        self.ramp = (ramp / ramp.max()).to(device)
        self.batch_size = _batch_size(settings["batch_size"], device, self.window)
        self.autocast = devices.autocast(settings["precision"], device)
        self.forward = torch.compile(model, dynamic=False) if compiled else model
        self.span = "compiling" if compiled else "model"  # the first compiled call compiles
        self.queue: list[tuple[_Pass, int, int]] = []  # (pass, segment offset, length)

    def add(self, track: Track, mix: np.ndarray, rate: int, sample_rate: int) -> None:
        """Queue the segments of ``track``'s mix [C, N], normalised like the demucs CLI
        (undone at the end), once per shift."""
        path = track["ingest"]["audio"]
        if mix.shape[1] == 0:
            raise ValueError(f"{path} has no samples")
        if rate != self.model.samplerate or rate != sample_rate:
            raise ValueError(f"{path} is {rate} Hz; the model wants {self.model.samplerate} Hz")
        mix = torch.from_numpy(mix).to(self.device)
        ref = mix.mean(0)
        song = _Song(track, ref.mean(), ref.std() + 1e-8, mix.shape[1], [], 0)
        max_shift = int(0.5 * self.model.samplerate)
        random.seed(track.name)  # demucs draws its shifts from `random`: reproducible
        pads = [max_shift - random.randint(0, max_shift) for _ in range(self.shifts)] or [0]
        mix = (mix - song.mean) / song.std
        for pad in pads:
            x = torch.nn.functional.pad(mix, (pad, 0))
            offsets = range(0, x.shape[1], self.stride)
            out = torch.zeros(len(self.model.sources), *x.shape, device=self.device)
            p = _Pass(song, x, pad, out, torch.zeros(x.shape[1], device=self.device),
                      len(offsets))
            song.passes.append(p)
            self.queue += [(p, o, min(self.seg, x.shape[1] - o)) for o in offsets]
        song.left = len(pads)

    def full_batches(self) -> Iterator[tuple[Track, dict, None]]:
        """Run the full batches queued so far; yield the tracks they finish."""
        while len(self.queue) >= self.batch_size:
            batch, self.queue = self.queue[:self.batch_size], self.queue[self.batch_size:]
            yield from ((s.track, self._stems(s), None) for s in self._run(batch))

    def flush(self) -> Iterator[tuple[Track, dict, None]]:
        """Run what is left in the queue; yield the tracks it finishes."""
        queue, self.queue = self.queue, []
        for b in range(0, len(queue), self.batch_size):
            batch = queue[b:b + self.batch_size]
            yield from ((s.track, self._stems(s), None) for s in self._run(batch))

    def _run(self, batch: list[tuple[_Pass, int, int]]) -> Iterator[_Song]:
        """One forward pass; yields the songs it completes."""
        y = self._forward(self._inputs(batch))  # [B, S, C, W]
        ramp = self.ramp
        for j, (p, offset, length) in enumerate(batch):
            trim = (self.window - length) // 2
            p.out[..., offset:offset + length] += ramp[:length] * y[j, ..., trim:trim + length]
            p.weight[offset:offset + length] += ramp[:length]
            p.left -= 1
            if p.left == 0:
                p.song.left -= 1
                if p.song.left == 0:
                    yield p.song

    def _inputs(self, batch: list[tuple[_Pass, int, int]]) -> torch.Tensor:
        """The batch's segments [B, C, W], each centred in the window as demucs pads it, and
        zero rows up to ``batch_size`` for the compiled forward's one shape."""
        window = self.window
        rows = self.batch_size if self.forward is not self.model else len(batch)
        x = torch.zeros(rows, batch[0][0].x.shape[0], window, device=self.device)
        for j, (p, offset, length) in enumerate(batch):
            start = offset - (window - length) // 2
            lo, hi = max(start, 0), min(start + window, p.x.shape[1])
            x[j, :, lo - start:hi - start] = p.x[:, lo:hi]
        return x

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.clock(self.span), self.autocast:
            try:
                y = self.forward(x).float()
            except torch.cuda.OutOfMemoryError as e:
                raise devices.out_of_memory("separate", self.batch_size) from e
            except Exception as e:
                if self.forward is self.model:
                    raise
                log.warning("torch.compile of Demucs failed, separating without it: %s: %s",
                            type(e).__name__, e)
                self.forward = self.model
                y = self.model(x).float()
        self.span = "model"
        return y

    def _stems(self, song: _Song) -> dict[str, torch.Tensor]:
        n = song.n
        out = sum(p.out[..., p.pad:p.pad + n] / p.weight[p.pad:p.pad + n]
                  for p in song.passes) / len(song.passes)
        out = out * song.std + song.mean
        return {name: out[i] for i, name in enumerate(self.model.sources)}


def _batch_size(setting: int | str, device: torch.device, window: int) -> int:
    # On a CPU a batch of segments runs slower per segment than one at a time (BENCHMARKS.md)
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 1
    size = devices.fit_batch(16, window * DEMUCS_PEAK_BYTES, torch.cuda.mem_get_info(device)[0])
    log.info("batches of %d segments (separate.batch_size: auto)", size)
    return size


def _compile(setting: bool | str, device: torch.device, tracks: list[Track]) -> bool:
    """Whether to compile the forward: only when the job holds enough audio (ingest's
    durations) to pay for the compile (BENCHMARKS.md)."""
    if setting == "auto":
        seconds = sum(read_json(t["ingest"]["status"]).get("duration", 0) for t in tracks)
        return seconds >= COMPILE_MIN_AUDIO.get(device.type, math.inf)
    return bool(setting)
