"""The codec: EnCodec codes of whole tracks of any length, and audio from codes.

Shared by tokenize (the dataset's tokens), evaluate and accompany (encoding backings,
decoding solos). Audio is cut into chunks that are encoded in batches across tracks, each
with a warm-up of the audio before it, so that codes at chunk seams stay close to those of
encoding the whole track at once; decoding does the same with frames.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchaudio.transforms import Resample

from soloist.device import fit_batch, out_of_memory
from soloist.io import Clock

log = logging.getLogger("soloist.codec")
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
    batches = _Batches(model, batch_size, warm // hop, clock or Clock())
    queue: list[tuple[_Codes, int]] = []  # (track, chunk index)
    for key, audio, rate in tracks:
        with batches.clock("resampling"):
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
            yield from batches.run(batch)
    for b in range(0, len(queue), batch_size):
        yield from batches.run(queue[b:b + batch_size])
    yield from batches.run(None)


@dataclass(eq=False)  # told apart by identity
class _Codes:
    key: Any
    windows: torch.Tensor  # [chunks, warmup + chunk]: each chunk's samples at the model's rate
    left: int              # chunks still to come back
    frames: int
    parts: list[np.ndarray] = field(default_factory=list)  # [K, T_i] int16, in time order

    def result(self) -> np.ndarray:
        return np.concatenate(self.parts, axis=1)[:, :self.frames]


class _Batches:
    """Encodes batches of chunks with one batch in flight: the GPU encodes it while this
    thread appends the previous one's codes and gathers the next one's chunks."""

    def __init__(self, model: torch.nn.Module, batch_size: int, skip: int, clock: Clock):
        self.model, self.batch_size, self.skip, self.clock = model, batch_size, skip, clock
        self.cuda = next(model.parameters()).device.type == "cuda"
        self.pending: tuple | None = None

    def run(self, batch: list[tuple[_Codes, int]] | None) -> Iterator[tuple[Any, np.ndarray]]:
        """Launch ``batch`` (None: nothing more); yield the tracks the one before completes."""
        launched, self.pending = self.pending, batch and self.launch(batch)
        if launched:
            yield from ((t.key, t.result()) for t in self.land(*launched))

    # Few torch calls per batch, whatever its rows: beside busy reader threads each call of
    # this thread costs more, and per-row copies in and out left the GPU idle (BENCHMARKS.md)
    def launch(self, batch: list[tuple[_Codes, int]]) -> tuple[list, torch.Tensor, Any]:
        """Start encoding ``batch``; its codes [B, K, T] head for the host unwaited for.
        Returns ``(runs, codes, done)``: runs of (track, first chunk, chunks) in row order."""
        runs = []
        for t, group in itertools.groupby(batch, key=lambda item: item[0]):
            chunks = [i for _, i in group]
            runs.append((t, chunks[0], len(chunks)))
        x = torch.cat([t.windows[first:first + n] for t, first, n in runs])[:, None]
        with self.clock("encoding"):
            try:
                frames = self.model.encode(x)
            except torch.cuda.OutOfMemoryError as e:
                raise out_of_memory("tokenize", self.batch_size) from e
        out = torch.cat([f[0] for f in frames], dim=-1).to(torch.int16)
        if not self.cuda:
            return runs, out, None
        # copied now, before the next batch's kernels join the stream: then waiting for
        # these codes does not wait for the next batch too
        out = out.to("cpu", non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return runs, out, done

    def land(self, runs: list, out: torch.Tensor, done: Any) -> Iterator[_Codes]:
        """Append a launched batch's codes to their tracks; yield the tracks it completes."""
        with self.clock("encoding"):  # waits for the GPU
            if done is not None:
                done.synchronize()
        out, row = out.numpy(), 0
        for t, first, n in runs:
            rows, row = out[row:row + n], row + n  # [n, K, T]
            if first == 0:  # nothing comes before chunk 0: it keeps its warm-up's codes
                t.parts.append(rows[0, :, :self.skip].copy())
            t.parts.append(rows[:, :, self.skip:].transpose(1, 0, 2).reshape(out.shape[1], -1))
            t.left -= n
            if t.left == 0:
                yield t


@functools.cache
def resampler(orig: int, new: int, device: torch.device) -> torch.nn.Module:
    """A resampler from ``orig`` to ``new`` Hz on ``device``, its filter made once."""
    return Resample(orig, new).to(device)


def encode(model: torch.nn.Module, tracks: list[np.ndarray], sample_rate: int,
           chunk_seconds: float, batch_size: int | str = "auto", warmup_seconds: float = 0.0
           ) -> list[np.ndarray]:
    """EnCodec codes of each mono track [N] at ``sample_rate``: one int16 [K, T] per track.
    ``batch_size`` is chunks per forward pass, or auto (tokenize.batch_size's)."""
    device = next(model.parameters()).device
    chunk = round((chunk_seconds + warmup_seconds) * model.sample_rate)
    batch = chunk_batch(batch_size, device, chunk, model.encoder.n_filters)
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


def chunk_batch(setting: int | str, device: torch.device, samples: int, channels: int) -> int:
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
