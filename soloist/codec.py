"""The codec: codes of whole tracks of any length, and audio from codes.

One code path for every codec (EnCodec 24 and 32 kHz and DAC 44.1 kHz, through
transformers): ``Codec`` says what its codes are (K, cardinality, frame rate) and turns a
batch of audio into codes and back. Shared by tokenize (the dataset's tokens), evaluate and
accompany (encoding backings, decoding solos). Audio is cut into chunks that are encoded in
batches across tracks, each with a warm-up of the audio before it (and, for a codec that
looks ahead, as much after it), so that codes at chunk seams stay close to those of encoding
the whole track at once; decoding does the same with frames.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchaudio.transforms import Resample

from soloist.device import autocast, fit_batch, out_of_memory
from soloist.io import Clock

log = logging.getLogger("soloist.codec")


@dataclass(eq=False)
class Codec:
    """A loaded codec (a transformers ``EncodecModel`` or ``DacModel``, or our own
    ``soloist.own_codec.OwnCodec``) that writes its first ``codebooks`` codebooks: codes
    [B, K, T] of audio [B, 1, N] at ``sample_rate``, T = ceil(N / hop), and back (our own
    codec with a VAE bottleneck, and any codec for ``latents``, writes the encoder's
    continuous frames [B, D, T] instead). ``soloist.weights.load_codec`` loads one."""

    name: str
    model: torch.nn.Module
    codebooks: int
    precision: str = "fp32"  # of the encoder's convolutions (device.autocast); quantizers: fp32
    # the model's encoder torch.compiled for one input shape (tokenize.compile), or None
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None
    latents: bool = False  # tokens are the encoder's frames before quantization (task.output)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return int(self.config.sampling_rate)

    @property
    def hop(self) -> int:
        return int(self.config.hop_length)

    @property
    def frame_rate(self) -> float:
        """Frames a second, exact (transformers' own ``frame_rate`` rounds DAC's 86.13 up)."""
        return self.sample_rate / self.hop

    @property
    def cardinality(self) -> int:
        return int(self.config.codebook_size)

    @property
    def vae(self) -> bool:
        """Whether it is our own codec with a VAE bottleneck (latents its only tokens)."""
        return getattr(self.config, "bottleneck", "rvq") == "vae"

    @property
    def continuous(self) -> bool:
        """Whether its tokens are latents [D, T] (float16 on disk), not codes."""
        return self.latents or self.vae

    @property
    def dimension(self) -> int:
        """Channels D of its latents [B, D, T]."""
        return int(getattr(self.config, "dimension", None) or self.config.hidden_size)

    @property
    def peak_bytes(self) -> float:
        """GPU memory per batch row and input sample at the encoder's peak (batch_size:
        auto): measured for the published codecs, scaled by width for our own."""
        from soloist.weights import CODECS

        if self.name in CODECS:
            return CODECS[self.name].peak_bytes
        return CODECS["encodec_24khz"].peak_bytes * self.channels / 32

    @property
    def causal(self) -> bool:
        """Whether a frame's code depends on no later audio (then chunks need no lookahead)."""
        return bool(getattr(self.config, "use_causal_conv", False))

    @property
    def channels(self) -> int:
        """Channels of the widest activation, [B, channels, N]: the first convolution's."""
        return int(getattr(self.config, "num_filters", None) or self.config.encoder_hidden_size)

    @property
    def compiled(self) -> bool:
        return self.encoder is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Codes int64 [B, K, T] (continuous: latents float32 [B, D, T]) of mono audio
        [B, 1, N] at ``sample_rate``."""
        if self.config.model_type == "soloist_codec" and (self.vae or not self.latents):
            return self.model.encode(audio, self.codebooks)
        embeddings = self.embed(audio)
        return embeddings if self.latents else self.quantize(embeddings)

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """The encoder's continuous output, float32 [B, D, T], of mono audio [B, 1, N]."""
        if self.config.model_type == "dac":  # pads to whole frames itself, as DAC's own code
            audio = torch.nn.functional.pad(audio, (0, -audio.shape[-1] % self.hop))
        with autocast(self.precision, audio.device):
            embeddings = self._encoded(audio)
        # nearest codes in fp32: in bf16, near ties between codes would flip
        return embeddings.float()

    def _encoded(self, audio: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            return self.model.encoder(audio)
        try:
            return self.encoder(audio)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # e.g. no C++ compiler on a CPU node: the stage goes on
            log.warning("torch.compile of the codec's encoder failed, encoding without it: "
                        "%s: %s", type(e).__name__, str(e).splitlines()[0])
            self.encoder = None
            return self.model.encoder(audio)

    def quantize(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Codes int64 [B, K, T] of the encoder's output [B, D, T]."""
        if self.config.model_type == "dac":
            return self.model.quantizer(embeddings, self.codebooks)[1]
        quantizer = self.model.quantizer
        # the bandwidth of exactly K codebooks (half a codebook more keeps float rounding out)
        bits = math.log2(self.cardinality) * quantizer.frame_rate
        codes = quantizer.encode(embeddings, (self.codebooks + 0.5) * bits / 1000)
        return codes.transpose(0, 1)  # [K, B, T] -> [B, K, T]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Mono audio [B, T * hop] of codes [B, K, T] (continuous: latents [B, D, T])."""
        if self.config.model_type == "soloist_codec" and (self.vae or not self.latents):
            return self.model.decode(codes)
        if self.latents:  # every decoder here maps the encoder's frames to audio [B, 1, N]
            return self.model.decoder(codes)[:, 0]
        if self.config.model_type == "dac":
            return self.model.decode(audio_codes=codes).audio_values
        return self.model.decoder(self.model.quantizer.decode(codes.transpose(0, 1)))[:, 0]


@torch.inference_mode()
def encode_stream(codec: Codec, tracks: Iterable[tuple[Any, np.ndarray | torch.Tensor, int]],
                  chunk_seconds: float, batch_size: int, warmup_seconds: float = 0.0,
                  clock: Clock | None = None) -> Iterator[tuple[Any, np.ndarray]]:
    """Codes of mono tracks ``(key, audio [N] float, sample_rate)``: yields ``(key, codes)``,
    int16 [K, T] (latents: float16 [D, T]), as each track's last chunk comes back (chunks
    of consecutive tracks share batches [B, 1, warmup + chunk + lookahead]).

    Every chunk after the first also reads the ``warmup_seconds`` before it and drops the
    codes of those: the encoder's convolutions and LSTM then start a chunk in the state the
    whole track would have left them in, so the codes match whole-track encoding at seams.
    A codec that is not causal also reads as much after the chunk (its lookahead).
    T = ceil(N' / hop) where N' is the length at the codec's rate.
    """
    rate, hop = codec.sample_rate, codec.hop
    chunk = max(hop, round(chunk_seconds * rate) // hop * hop)
    warm = round(warmup_seconds * rate) // hop * hop
    length = warm + chunk + (0 if codec.causal else warm)  # samples each batch row reads
    batches = _Batches(codec, batch_size, warm // hop, chunk // hop, clock or Clock())
    queue: list[tuple[_Codes, int]] = []  # (track, chunk index)
    for key, audio, sample_rate in tracks:
        with batches.clock("resampling"):
            x = resampler(sample_rate, rate, codec.device)(torch.as_tensor(audio).to(codec.device))
        if x.numel() == 0:
            raise ValueError(f"track {key!r} has no samples")
        n = 1 + math.ceil(max(0, x.numel() - warm - chunk) / chunk)
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
    windows: torch.Tensor  # [chunks, warmup + chunk + lookahead]: samples at the codec's rate
    left: int              # chunks still to come back
    frames: int
    parts: list[np.ndarray] = field(default_factory=list)  # [K, T_i] int16, in time order

    def result(self) -> np.ndarray:
        return np.concatenate(self.parts, axis=1)[:, :self.frames]


class _Batches:
    """Encodes batches of chunks with one batch in flight: the GPU encodes it while this
    thread appends the previous one's codes and gathers the next one's chunks."""

    def __init__(self, codec: Codec, batch_size: int, skip: int, keep: int, clock: Clock):
        self.codec, self.batch_size, self.clock = codec, batch_size, clock
        self.skip, self.keep = skip, keep  # frames of warm-up dropped, of the chunk kept
        self.cuda = codec.device.type == "cuda"
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
        if self.codec.compiled:  # zero rows up to the one shape it was compiled for
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self.batch_size - len(x)))
        with self.clock("encoding"):
            try:
                codes = self.codec.encode(x)
            except torch.cuda.OutOfMemoryError as e:
                raise out_of_memory("tokenize", self.batch_size) from e
        out = codes[:len(batch), :, :self.skip + self.keep]
        out = out.half() if out.is_floating_point() else out.to(torch.int16)
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


def compiled_encoder(encoder: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A copy of ``encoder`` ``torch.compile``d for one input shape (tokenize.compile), its
    convolutions in channels-last memory (``channels_last_convs``): DAC's encoder 4.7x
    eager on an H200, where compiling it as it is gives 3.5x (BENCHMARKS.md). A copy:
    should the compile fail, the eager encoder it falls back to is the model's own."""
    encoder = copy.deepcopy(encoder)
    channels_last_convs(encoder)
    return torch.compile(encoder, dynamic=False)


def channels_last_convs(module: torch.nn.Module) -> int:
    """Run every zero-padded Conv1d of ``module`` as a conv2d on [B, C, 1, N] in channels-last
    memory; how many there are. cuDNN's fast kernels read and write that layout: a Conv1d
    changes the layout of its input and output on each call, and so these convolutions do
    not. Their outputs [B, C, N] keep the layout (strides [N C, 1, C]), and so do the
    elementwise ops between them."""
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv1d)
             and m.padding_mode == "zeros" and not isinstance(m.padding, str)]
    for conv in convs:
        conv.forward = functools.partial(_conv1d_as_2d, conv)
    return len(convs)


def _conv1d_as_2d(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) of x [B, C, N], as a conv2d of x [B, C, 1, N] in channels-last memory."""
    x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    return torch.nn.functional.conv2d(
        x, conv.weight.unsqueeze(2), conv.bias, (1, conv.stride[0]), (0, conv.padding[0]),
        (1, conv.dilation[0]), conv.groups).squeeze(2)


@functools.cache
def resampler(orig: int, new: int, device: torch.device) -> torch.nn.Module:
    """A resampler from ``orig`` to ``new`` Hz on ``device``, its filter made once."""
    return Resample(orig, new).to(device)


def encode(codec: Codec, tracks: list[np.ndarray], sample_rate: int, chunk_seconds: float,
           batch_size: int | str = "auto", warmup_seconds: float = 0.0) -> list[np.ndarray]:
    """Codes of each mono track [N] at ``sample_rate``: one int16 [K, T] per track.
    ``batch_size`` is chunks per forward pass, or auto (tokenize.batch_size's)."""
    batch = chunk_batch(batch_size, codec, chunk_seconds, warmup_seconds)
    codes = dict(encode_stream(codec, ((i, t, sample_rate) for i, t in enumerate(tracks)),
                               chunk_seconds, batch, warmup_seconds))
    return [codes[i] for i in range(len(tracks))]


@torch.inference_mode()
def decode(codec: Codec, codes: np.ndarray | torch.Tensor, chunk_seconds: float = 10.0,
           warmup_seconds: float = 0.5, batch_size: int = 16) -> np.ndarray:
    """Mono audio float32 [T * hop] at the codec's rate of codes [K, T], any T.

    Decoded in chunks of ``chunk_seconds`` (one batch for up to ``batch_size`` of them),
    each decoding the ``warmup_seconds`` before it too and dropping their audio: the
    decoder's convolutions and LSTM then start a chunk in the state the whole sequence
    would have left them in.
    """
    codes = torch.as_tensor(codes, device=codec.device)
    codes = codes.float() if codec.continuous else codes.long()
    K, T = codes.shape
    hop, chunk = codec.hop, max(1, round(chunk_seconds * codec.frame_rate))
    warm = round(warmup_seconds * codec.frame_rate)
    length = warm + chunk
    n = max(1, math.ceil((T - warm) / chunk))
    # chunk i reads frames [i * chunk, i * chunk + length); the first keeps all of its audio
    padded = torch.nn.functional.pad(codes, (0, (n - 1) * chunk + length - T))
    windows = padded.unfold(1, length, chunk).transpose(0, 1)  # [n, K, length]
    parts = []
    for b in range(0, n, batch_size):
        audio = codec.decode(windows[b:b + batch_size])  # [B, length * hop]
        parts += [a[warm * hop if b + j else 0:] for j, a in enumerate(audio)]
    return torch.cat(parts)[:T * hop].float().cpu().numpy()


def chunk_batch(setting: int | str, codec: Codec, chunk_seconds: float,
                warmup_seconds: float) -> int:
    """Chunks per batch for ``encode_stream``'s rows: the setting, checked against the 32-bit
    index range of torch's CUDA kernels (the widest activation is [B, channels, samples]),
    or on a GPU as many as fit its free memory."""
    seconds = chunk_seconds + warmup_seconds * (1 if codec.causal else 2)
    samples, device = round(seconds * codec.sample_rate), codec.device
    # + 64: the convolutions pad their input by a few samples
    most = (2**31 - 1) // (codec.channels * (samples + 64)) if device.type == "cuda" else math.inf
    if setting != "auto":
        if int(setting) > most:
            raise ValueError(f"tokenize.batch_size: {setting} chunks of {samples} samples are "
                             f"more than {codec.name} takes in one pass on a GPU; at most {most}")
        return int(setting)
    if device.type != "cuda":
        return 16
    if most < 1:
        raise ValueError(f"tokenize.chunk_seconds: a chunk of {samples} samples is more than "
                         f"{codec.name} takes in one pass on a GPU")
    size = fit_batch(min(64, most), samples * codec.peak_bytes,
                     torch.cuda.mem_get_info(device)[0])
    log.info("batches of %d chunks (tokenize.batch_size: auto)", size)
    return size
