"""EnCodec tokens of the full context and target tracks.

Whole tracks are tokenized (not clips), so changing clip settings never re-tokenizes.
Audio is cut into ``chunk_seconds`` chunks that are encoded in batches across roles and
tracks, each with ``warmup_seconds`` of the audio before it, so that codes at chunk seams
stay close to those of encoding the whole track at once.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchaudio.transforms import Resample
from tqdm import tqdm

from soloist.fetch_weights import ENCODEC_RATES, load_encodec
from soloist.io import (
    Background,
    Clock,
    failed,
    first_failure,
    prefetch,
    read_json,
    read_pcm16,
    touch_empty,
    write_json,
    write_npy,
)
from soloist.separate import fit_batch, out_of_memory, pick_device
from soloist.tracks import Batch, provenance, run_batch

log = logging.getLogger("soloist.tokenize")
ROLES = ("context", "target")
# Both roles' pieces are decoded at once, so 30 s pieces keep 16 threads busy (10 s ones
# slowed the model load when it still ran beside the reads, BENCHMARKS.md)
PIECE_SECONDS = 30.0
# batch_size: auto fits the GPU it gets: EnCodec's peak memory per batch row, per sample it
# reads (an H200, torch 2.11; BENCHMARKS.md): 11.6 GiB for 64 chunks of 10.5 s
ENCODE_PEAK_BYTES = 780


@torch.inference_mode()
def encode_stream(model: torch.nn.Module,
                  tracks: Iterable[tuple[Any, np.ndarray | torch.Tensor, int]],
                  chunk_seconds: float, batch_size: int, warmup_seconds: float = 0.0,
                  clock: Clock | None = None) -> Iterator[tuple[Any, np.ndarray]]:
    """EnCodec codes of mono tracks ``(key, audio [N] float, sample_rate)``: yields
    ``(key, codes)``, int16 [K, T], as each track's last chunk comes back (chunks of
    consecutive tracks share batches [B, 1, warmup + chunk]).

    Every chunk after the first also reads the ``warmup_seconds`` before it and drops the
    codes of those: the encoder's convolutions and LSTM then start a chunk in the state the
    whole track would have left them in, so the codes match whole-track encoding at seams.
    T = ceil(N' / hop) where N' is the length at the model's rate and hop its frame hop.
    """
    device = next(model.parameters()).device
    hop = int(np.prod(model.encoder.ratios))
    chunk = max(hop, round(chunk_seconds * model.sample_rate) // hop * hop)
    warm = round(warmup_seconds * model.sample_rate) // hop * hop
    length = warm + chunk  # samples each batch row reads
    queue: list[tuple[_Codes, int]] = []  # (track, chunk index)
    clock = clock or Clock()

    # Few torch calls per batch, whatever its rows: beside busy reader threads each call of
    # this thread costs more, and per-row copies in and out left the GPU idle (BENCHMARKS.md)
    def launch(batch: list[tuple[_Codes, int]]) -> tuple[list, torch.Tensor, Any]:
        """Start encoding ``batch``; its codes [B, K, T] head for the host unwaited for.
        Returns ``(runs, codes, done)``: runs of (track, first chunk, chunks) in row order."""
        runs = []
        for t, group in itertools.groupby(batch, key=lambda item: item[0]):
            chunks = [i for _, i in group]
            runs.append((t, chunks[0], len(chunks)))
        x = torch.cat([t.windows[first:first + n] for t, first, n in runs])[:, None]
        with clock("encoding"):
            try:
                frames = model.encode(x)
            except torch.cuda.OutOfMemoryError as e:
                raise out_of_memory("tokenize", batch_size) from e
        out = torch.cat([f[0] for f in frames], dim=-1).to(torch.int16)
        if device.type != "cuda":
            return runs, out, None
        # copied now, before the next batch's kernels join the stream: then waiting for
        # these codes does not wait for the next batch too
        out = out.to("cpu", non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return runs, out, done

    def land(runs: list, out: torch.Tensor, done: Any) -> Iterator[_Codes]:
        """Append a launched batch's codes to their tracks; yield the tracks it completes."""
        with clock("encoding"):  # waits for the GPU
            if done is not None:
                done.synchronize()
        out, skip, row = out.numpy(), warm // hop, 0
        for t, first, n in runs:
            rows, row = out[row:row + n], row + n  # [n, K, T]
            if first == 0:  # nothing comes before chunk 0: it keeps its warm-up's codes
                t.parts.append(rows[0, :, :skip].copy())
            t.parts.append(rows[:, :, skip:].transpose(1, 0, 2).reshape(out.shape[1], -1))
            t.left -= n
            if t.left == 0:
                yield t

    # One batch stays in flight: the GPU encodes it while this thread appends the previous
    # one's codes and gathers the next one's chunks
    pending = None

    def run(batch: list[tuple[_Codes, int]]) -> Iterator[tuple[Any, np.ndarray]]:
        nonlocal pending
        launched, pending = pending, launch(batch)
        if launched:
            yield from ((t.key, t.result()) for t in land(*launched))

    for key, audio, rate in tracks:
        with clock("resampling"):
            x = resampler(rate, model.sample_rate, device)(torch.as_tensor(audio).to(device))
        if x.numel() == 0:
            raise ValueError(f"track {key!r} has no samples")
        n = 1 + math.ceil(max(0, x.numel() - length) / chunk)
        # chunk i reads samples [i * chunk, i * chunk + length), zeros past the end
        windows = torch.nn.functional.pad(x, (0, (n - 1) * chunk + length - x.numel()))
        t = _Codes(key, windows.unfold(0, length, chunk), n, math.ceil(x.numel() / hop))
        queue += [(t, i) for i in range(n)]
        while len(queue) >= batch_size:
            batch, queue = queue[:batch_size], queue[batch_size:]
            yield from run(batch)
    for b in range(0, len(queue), batch_size):
        yield from run(queue[b:b + batch_size])
    if pending:
        yield from ((t.key, t.result()) for t in land(*pending))


@functools.cache
def resampler(orig: int, new: int, device: torch.device) -> torch.nn.Module:
    """A resampler from ``orig`` to ``new`` Hz on ``device``, its filter made once."""
    return Resample(orig, new).to(device)


@dataclass(eq=False)  # told apart by identity
class _Codes:
    key: Any
    windows: torch.Tensor  # [chunks, warmup + chunk]: each chunk's samples at the model's rate
    left: int              # chunks still to come back
    frames: int
    parts: list[np.ndarray] = field(default_factory=list)  # [K, T_i] int16, in time order

    def result(self) -> np.ndarray:
        return np.concatenate(self.parts, axis=1)[:, :self.frames]


def encode(model: torch.nn.Module, tracks: list[np.ndarray], sample_rate: int,
           chunk_seconds: float, batch_size: int | str = "auto", warmup_seconds: float = 0.0
           ) -> list[np.ndarray]:
    """EnCodec codes of each mono track [N] at ``sample_rate``: one int16 [K, T] per track.
    ``batch_size`` is chunks per forward pass, or auto (tokenize.batch_size's)."""
    device = next(model.parameters()).device
    chunk = round((chunk_seconds + warmup_seconds) * model.sample_rate)
    batch = _batch_size(batch_size, device, chunk, model.encoder.n_filters)
    codes = dict(encode_stream(model, ((i, t, sample_rate) for i, t in enumerate(tracks)),
                               chunk_seconds, batch, warmup_seconds))
    return [codes[i] for i in range(len(tracks))]


@torch.inference_mode()
def decode(model: torch.nn.Module, codes: np.ndarray | torch.Tensor, chunk_frames: int = 750,
           warmup_frames: int = 38, batch_size: int = 16) -> np.ndarray:
    """Mono audio float32 [T * hop] at the codec's rate of codes [K, T], any T.

    Decoded in chunks of ``chunk_frames`` (one batch for up to ``batch_size`` of them), each
    decoding the ``warmup_frames`` before it too and dropping their audio: the causal
    decoder's convolutions and LSTM then start a chunk in the state the whole sequence
    would have left them in.
    """
    device = next(model.parameters()).device
    codes = torch.as_tensor(codes, device=device).long()
    K, T = codes.shape
    hop = int(np.prod(model.encoder.ratios))
    length = warmup_frames + chunk_frames
    n = max(1, math.ceil((T - warmup_frames) / chunk_frames))
    # chunk i reads frames [i * chunk, i * chunk + length); the first keeps all of its audio
    padded = torch.nn.functional.pad(codes, (0, (n - 1) * chunk_frames + length - T))
    windows = padded.unfold(1, length, chunk_frames).transpose(0, 1)  # [n, K, length]
    parts = []
    for b in range(0, n, batch_size):
        audio = model.decode([(windows[b:b + batch_size], None)])[:, 0]  # [B, length * hop]
        parts += [a[warmup_frames * hop if b + j else 0:] for j, a in enumerate(audio)]
    return torch.cat(parts)[:T * hop].float().cpu().numpy()


@dataclass
class Job:
    """One track to tokenize: separate's outputs in, codes and status out."""

    track: str
    context: Path
    target: Path
    upstream_status: Path
    context_out: Path
    target_out: Path
    status_out: Path
    provenance: str | None = None  # what made it (tracks.provenance), in its status


def tokenize(track: str, context: str | os.PathLike, target: str | os.PathLike,
             upstream_status: str | os.PathLike, context_out: str | os.PathLike,
             target_out: str | os.PathLike, status_out: str | os.PathLike,
             weights: str | os.PathLike, settings: dict) -> dict:
    """Tokenize one track's context and target; write both [K, T] int16 .npy and a status."""
    job = Job(track, *(Path(p) for p in (context, target, upstream_status, context_out,
                                         target_out, status_out)))
    return tokenize_jobs([job], weights, settings)[0]


def tokenize_batch(separated: str | os.PathLike, record: str | os.PathLike,
                   weights: str | os.PathLike, settings: dict, shape: dict) -> list[dict]:
    """Tokenize every track of a separate batch (its record) into the batch of ``record``,
    keeping the tracks already tokenized from the same stems with the same ``shape`` and
    weights."""
    upstream, out = Batch.of("separate", separated), Batch.of("tokenize", record)
    model = read_json(weights)
    provenances = {t: provenance("tokenize", shape, model, p)
                   for t, p in upstream.tracks().items()}

    def job(track: str) -> Job:
        i, o = upstream.files(track), out.files(track)
        return Job(track, i["context"], i["target"], i["status"], o["context"], o["target"],
                   o["status"], provenances[track])

    return run_batch(out, provenances,
                     lambda todo: tokenize_jobs([job(t) for t in todo], weights, settings))


def tokenize_jobs(jobs: list[Job], weights: str | os.PathLike, settings: dict) -> list[dict]:
    """Tokenize ``jobs`` with one EnCodec, loaded once if any track needs it, reading the
    next tracks in threads while the GPU encodes. Never raises for a bad track: it gets a
    failed status. Returns the statuses in job order."""
    statuses: dict[str, dict] = {}
    todo = []
    for job in jobs:
        upstream = first_failure(job.upstream_status)
        if upstream:
            statuses[job.track] = _finish(job, upstream)
        else:
            todo.append(job)
    if todo:
        clock, device = Clock(), pick_device(settings["device"])
        # Loaded before the reads start: beside 16 reader threads it took 4x as long (0.45
        # vs 0.11 s on an H200 host), more than the reading it hid (BENCHMARKS.md)
        with clock("model load"):
            model = load_encodec(weights, settings["bandwidth"], device)
        manifest = read_json(weights)
        rate = ENCODEC_RATES[manifest["name"]]
        seconds = settings["chunk_seconds"] + settings["warmup_seconds"]
        batch = _batch_size(settings["batch_size"], device, round(seconds * model.sample_rate),
                            model.encoder.n_filters)
        # 4 tracks read at once and 8 ahead (their mono audio waits on the GPU): with fewer,
        # short tracks left the I/O threads idle
        reads = prefetch(lambda job: read_roles(job, device, rate), todo, workers=4, ahead=8)
        info = {"stage": "tokenize", "model": manifest["name"], "files": manifest["files"],
                "sample_rate": rate, "frame_rate": float(model.frame_rate),
                "bandwidth": settings["bandwidth"], "cardinality": int(model.quantizer.bins),
                "weights": "random" if manifest["random"] else "pretrained"}
        by_track = {job.track: job for job in todo}
        codes: dict[str, dict[str, np.ndarray]] = {}
        written: dict[str, Future] = {}  # track: its status
        bar = tqdm(total=len(todo), desc="tokenize", unit="track", disable=len(todo) < 2)

        def audio() -> Iterator[tuple[tuple[str, str], torch.Tensor, int]]:
            for job, monos, error in clock.iter("waiting for audio", reads):
                if error is not None:
                    statuses[job.track] = _fail(job, error)
                    bar.update()
                    continue
                for role, mono in zip(ROLES, monos, strict=True):
                    if mono.is_cuda:  # made on the reader's stream, used on this one
                        mono.record_stream(torch.cuda.current_stream(mono.device))
                    yield (job.track, role), mono, rate

        with Background() as writer:
            for (track, role), c in encode_stream(model, audio(), settings["chunk_seconds"],
                                                  batch, settings["warmup_seconds"], clock):
                codes.setdefault(track, {})[role] = c
                if len(codes[track]) == len(ROLES):
                    with clock("waiting for writes"):
                        written[track] = writer.submit(_write, by_track[track],
                                                       codes.pop(track), info)
                    bar.update()
            bar.close()
            with clock("waiting for writes"):
                writer.close()
        statuses |= {track: f.result() for track, f in written.items()}
        log.info("tokenized %d tracks in %s", len(todo), clock)
    return [statuses[job.track] for job in jobs]


def read_roles(job: Job, device: torch.device, sample_rate: int) -> list[torch.Tensor]:
    """Each role's mono mix [N'] at ``sample_rate`` on ``device`` (``read_audio(...).mean(0)``
    resampled). On a GPU the copy, the mix and the resampling run here, in the reader
    thread, on a stream of its own: they overlap the encoding instead of waiting for it."""
    pairs = read_pcm16([job.context, job.target], PIECE_SECONDS)
    if min(len(pcm) for pcm, _ in pairs) == 0:
        raise ValueError("no samples in the separated audio")
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
        monos = [resampler(rate, sample_rate, device)(
                     torch.from_numpy(pcm).to(device).float().mean(1) / 32768)
                 for pcm, rate in pairs]
    if stream:
        stream.synchronize()
    return monos


def _write(job: Job, codes: dict[str, np.ndarray], info: dict) -> dict:
    try:
        ctx, tgt = codes["context"], codes["target"]
        write_npy(job.context_out, ctx)
        write_npy(job.target_out, tgt)
        status = {"ok": True, **info, "track": job.track, "codebooks": int(ctx.shape[0]),
                  "frames": int(ctx.shape[1])}
    except Exception as e:  # one bad track must not stop the others
        return _fail(job, e)
    return _finish(job, status)


def _fail(job: Job, error: Exception) -> dict:
    log.error("tokenize failed for %s: %s: %s", job.track, type(error).__name__, error)
    return _finish(job, failed("tokenize", f"{type(error).__name__}: {error}", track=job.track))


def _finish(job: Job, status: dict) -> dict:
    if not status["ok"]:
        touch_empty(job.context_out, job.target_out)
    status = status | {"provenance": job.provenance}
    write_json(job.status_out, status)
    return status


def _batch_size(setting: int | str, device: torch.device, samples: int, channels: int) -> int:
    """Chunks per batch of ``samples`` each, for an encoder whose widest activation is
    [B, channels, samples]: torch's CUDA kernels index it with 32-bit ints."""
    # + 64: the convolutions pad their input by a few samples
    most = (2**31 - 1) // (channels * (samples + 64)) if device.type == "cuda" else math.inf
    if setting != "auto":
        if int(setting) > most:
            raise ValueError(f"tokenize.batch_size: {setting} chunks of {samples} samples are "
                             f"more than EnCodec takes in one pass on a GPU; at most {most}")
        return int(setting)
    if device.type != "cuda":
        return 16
    if most < 1:
        raise ValueError(f"tokenize.chunk_seconds: a chunk of {samples} samples is more than "
                         "EnCodec takes in one pass on a GPU")
    size = fit_batch(min(64, most), samples * ENCODE_PEAK_BYTES,
                     torch.cuda.mem_get_info(device)[0])
    log.info("batches of %d chunks (tokenize.batch_size: auto)", size)
    return size
