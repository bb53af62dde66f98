"""The codec soloist trains itself (``train_codec``): weights that are yours.

One of two encoder/decoder pairs (``architecture``):

- ``spectral``: convolutions over log-magnitude STFT frames (``n_fft``, half a codec frame
  apart) in and out, and Griffin-Lim (torchaudio) back to audio. It keeps pitch after minutes
  of training: on held-out demo saxophones, 98.7% of the frames within 50 cents at 6 kbps
  after 109 s on an H100, one seed (BENCHMARKS.md, "A codec that keeps pitch").
- ``seanet``: EnCodec's own waveform convolutions (transformers' ``EncodecEncoder`` and
  ``EncodecDecoder``). After as many steps its round trips are unvoiced, or one pitch for
  every note: 0% of the frames within 50 cents, with or without the quantizer.

and one of two bottlenecks:

- ``rvq``: a residual vector quantizer, K codebooks of ``codebook_size`` codes whose entries
  follow exponential moving averages of the vectors they quantize, and restart from a random
  vector of the batch when they go unused (dead codes). Quantizer dropout trains it to work
  with its first k codebooks for any k, so one model serves every bitrate. Codes [B, K, T].
- ``vae``: a continuous latent [B, D, T], a Gaussian whose KL divergence from N(0, 1) is kept
  small (with a warm-up, and free bits below which a dimension is not pushed further).

Saved as a model folder like the codecs of the Hub: ``config.json`` and ``model.safetensors``
(``save_pretrained``/``from_pretrained``), which ``soloist.weights.load_codec`` reads.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

MODEL_TYPE = "soloist_codec"


@dataclass
class OwnCodecConfig:
    """What shapes the codec; ``config.json`` holds it (and ``model_type``)."""

    sampling_rate: int = 24_000
    channels: int = 32  # of the first convolution; doubled at each downsampling
    ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])  # hop 320: 75 Hz at 24 kHz
    dimension: int = 128  # of the latent
    lstm_layers: int = 2
    bottleneck: str = "rvq"  # rvq | vae
    codebooks: int = 8  # rvq: K
    codebook_size: int = 1024
    quantizer_dropout: float = 0.5  # rvq: share of training batches that use k < K codebooks
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.5  # rvq: a code used less (EMA count) restarts
    architecture: str = "seanet"  # seanet | spectral (the default of config.yaml)
    n_fft: int = 1024  # spectral: of its STFT, whose hop is half a codec frame
    floor: float = 0.01  # spectral: added to magnitudes before the log (quiet bins weigh less)
    griffin_lim_iters: int = 32  # spectral: phase reconstruction iterations of decode

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    # what soloist.codec.Codec reads of a codec's config, named as transformers' are
    model_type = MODEL_TYPE

    @property
    def num_filters(self) -> int:
        return self.channels

    def seanet(self, latent: int) -> object:
        """The transformers EncodecConfig of an encoder/decoder with a ``latent``-channel end."""
        from transformers import EncodecConfig

        return EncodecConfig(sampling_rate=self.sampling_rate, num_filters=self.channels,
                             upsampling_ratios=self.ratios, hidden_size=latent,
                             num_lstm_layers=self.lstm_layers, use_causal_conv=False,
                             normalize=False, target_bandwidths=[1.0])


class _Residual(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv1d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mix(F.gelu(self.conv(F.gelu(x))))


def _stack(width: int, blocks: int = 2) -> list[nn.Module]:
    return [_Residual(width, 3 ** i) for i in range(blocks)]


class SpectralEncoder(nn.Module):
    """Audio [B, 1, N] -> latents [B, D, T], T = ceil(N / hop): convolutions over the
    log-magnitude STFT frames [B, n_fft / 2 + 1, 2T], two per codec frame."""

    def __init__(self, cfg: OwnCodecConfig):
        super().__init__()
        bins, width = cfg.n_fft // 2 + 1, cfg.channels * 8
        self.cfg = cfg
        self.net = nn.Sequential(nn.Conv1d(bins, width, 3, padding=1), *_stack(width),
                                 nn.Conv1d(width, width, 4, 2, 1), *_stack(width), nn.GELU(),
                                 nn.Conv1d(width, cfg.dimension, 3, padding=1))
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def spectrum(self, audio: Tensor) -> Tensor:
        """log(|STFT| + floor) [B, n_fft / 2 + 1, 2T] of audio [B, 1, N] (zero-padded to T
        whole frames)."""
        x = F.pad(audio[:, 0].float(), (0, -audio.shape[-1] % self.cfg.hop_length))
        stft = torch.stft(x, self.cfg.n_fft, self.cfg.hop_length // 2, window=self.window,
                          return_complex=True)
        return (stft[..., :-1].abs() + self.cfg.floor).log()  # centred: 2T + 1 frames

    def forward(self, audio: Tensor) -> Tensor:
        return self.net(self.spectrum(audio))


class SpectralDecoder(nn.Module):
    """Latents [B, D, T] -> the log-magnitude frames [B, n_fft / 2 + 1, 2T] (``spectrum``,
    what it is trained on) -> audio [B, 1, T * hop] (Griffin-Lim from zero phase:
    deterministic)."""

    def __init__(self, cfg: OwnCodecConfig):
        super().__init__()
        bins, width = cfg.n_fft // 2 + 1, cfg.channels * 8
        self.cfg = cfg
        self.net = nn.Sequential(nn.Conv1d(cfg.dimension, width, 3, padding=1), *_stack(width),
                                 nn.ConvTranspose1d(width, width, 4, 2, 1), *_stack(width),
                                 nn.GELU(), nn.Conv1d(width, bins, 3, padding=1))
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def spectrum(self, latents: Tensor) -> Tensor:
        return self.net(latents)

    def forward(self, latents: Tensor) -> Tensor:
        import torchaudio.functional as AF

        magnitude = (self.spectrum(latents).float().exp() - self.cfg.floor).clamp(min=0)
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], -1)  # the centred last frame
        audio = AF.griffinlim(magnitude, self.window, self.cfg.n_fft, self.cfg.hop_length // 2,
                              self.cfg.n_fft, power=1.0, n_iter=self.cfg.griffin_lim_iters,
                              momentum=0.99, length=latents.shape[-1] * self.cfg.hop_length,
                              rand_init=False)
        return audio[:, None]


class ResidualVQ(nn.Module):
    """K codebooks [K, size, D], each quantizing what the ones before left over."""

    def __init__(self, cfg: OwnCodecConfig):
        super().__init__()
        K, size, D = cfg.codebooks, cfg.codebook_size, cfg.dimension
        self.decay, self.threshold = cfg.ema_decay, cfg.dead_code_threshold
        self.register_buffer("embed", torch.zeros(K, size, D))
        self.register_buffer("embed_sum", torch.zeros(K, size, D))
        self.register_buffer("cluster_size", torch.zeros(K, size))
        self.register_buffer("initialised", torch.zeros(K))

    def forward(self, x: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Quantize latents [B, D, T] with the first ``n`` codebooks: (quantized [B, D, T],
        straight-through to ``x``; codes int64 [B, n, T]; commitment loss). In training,
        the codebooks also move toward the vectors they quantized. Always in fp32, also
        under bf16 autocast: nearest codes would flip at near ties, and the fp32 codebook
        sums take no bf16 update."""
        with torch.autocast(x.device.type, enabled=False):
            return self._quantize(x.float(), n)

    def _quantize(self, x: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
        B, D, T = x.shape
        residual = x.detach().transpose(1, 2).reshape(-1, D)  # [B*T, D]
        quantized, codes = torch.zeros_like(residual), []
        for k in range(n):
            if self.training and not self.initialised[k]:
                self._initialise(k, residual)
            idx = torch.cdist(residual, self.embed[k]).argmin(-1)
            q = self.embed[k][idx]
            # moved after quantizing: codes restarted from this batch's vectors would quantize
            # those very vectors exactly, leaving the later codebooks nothing to learn
            if self.training:
                self._update(k, residual, idx)
            quantized, residual = quantized + q, residual - q
            codes.append(idx.view(B, T))
        quantized = quantized.view(B, T, D).transpose(1, 2)
        commitment = F.mse_loss(x, quantized)
        return x + (quantized - x).detach(), torch.stack(codes, 1), commitment

    def lookup(self, codes: Tensor) -> Tensor:
        """Latents [B, D, T] of codes [B, k, T] (the first k codebooks)."""
        return sum(self.embed[k][codes[:, k]] for k in range(codes.shape[1])).transpose(1, 2)

    @torch.no_grad()
    def _initialise(self, k: int, vectors: Tensor) -> None:
        """Codebook k from random rows of ``vectors`` [N, D] (rank 0's, under DDP)."""
        self.embed[k] = _sample(vectors, self.embed.shape[1])
        self.embed_sum[k] = self.embed[k]
        self.cluster_size[k] = 1.0
        self.initialised[k] = 1.0
        if dist.is_initialized():
            dist.broadcast(self.embed, 0)
            dist.broadcast(self.embed_sum, 0)

    @torch.no_grad()
    def _update(self, k: int, vectors: Tensor, idx: Tensor) -> None:
        """EMA of codebook k toward ``vectors`` [N, D], which it quantized to codes ``idx``
        [N] (summed over DDP ranks); unused codes restart from random vectors of the batch."""
        size = self.embed.shape[1]
        onehot = F.one_hot(idx, size).type_as(vectors)
        counts, sums = onehot.sum(0), onehot.t() @ vectors
        if dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size[k].lerp_(counts, 1 - self.decay)
        self.embed_sum[k].lerp_(sums, 1 - self.decay)
        n = self.cluster_size[k].sum()
        smoothed = (self.cluster_size[k] + 1e-5) / (n + size * 1e-5) * n  # Laplace
        self.embed[k] = self.embed_sum[k] / smoothed[:, None]
        dead = self.cluster_size[k] < self.threshold
        if dead.any():
            self.embed[k][dead] = _sample(vectors, int(dead.sum()))
            self.embed_sum[k][dead] = self.embed[k][dead]
            self.cluster_size[k][dead] = 1.0
        if dist.is_initialized():  # the restarts drew from this rank's batch: rank 0's win
            for buffer in (self.embed, self.embed_sum, self.cluster_size):
                dist.broadcast(buffer, 0)


def _sample(vectors: Tensor, n: int) -> Tensor:
    """``n`` rows of ``vectors`` [N, D], without replacement while there are enough."""
    if len(vectors) >= n:
        return vectors[torch.randperm(len(vectors), device=vectors.device)[:n]].clone()
    return vectors[torch.randint(len(vectors), (n,), device=vectors.device)].clone()


class OwnCodec(nn.Module):
    """Encoder, bottleneck, decoder. Audio is mono [B, 1, N] at ``cfg.sampling_rate``."""

    def __init__(self, cfg: OwnCodecConfig):
        super().__init__()
        self.cfg = self.config = cfg
        vae = cfg.bottleneck == "vae"
        if self.spectral:
            encoder = SpectralEncoder(replace(cfg, dimension=cfg.dimension * (2 if vae else 1)))
            self.encoder, self.decoder = encoder, SpectralDecoder(cfg)
        else:
            from transformers.models.encodec.modeling_encodec import EncodecDecoder, EncodecEncoder

            self.encoder = EncodecEncoder(cfg.seanet(cfg.dimension * (2 if vae else 1)))
            self.decoder = EncodecDecoder(cfg.seanet(cfg.dimension))
        self.quantizer = ResidualVQ(cfg) if not vae else None

    @property
    def spectral(self) -> bool:
        return self.cfg.architecture == "spectral"

    def forward(self, audio: Tensor, codebooks: int | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction: audio [B, 1, N], or for ``spectral`` the log-magnitude frames
        that ``spectral_distance`` compares; the bottleneck's latents [B, D, T] (rvq:
        quantized; vae: a sample); the bottleneck's loss: commitment, or the KL per
        dimension and frame [D] averaged over batch and frames)."""
        h = self.encoder(audio)
        if self.quantizer is not None:
            latents, _, loss = self.quantizer(h, codebooks or self.cfg.codebooks)
        else:
            mean, logvar = h.chunk(2, dim=1)
            latents = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
            loss = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean((0, 2))
        if self.spectral:  # Griffin-Lim has nothing to learn: trained on the spectrum
            return self.decoder.spectrum(latents), latents, loss
        return self.decoder(latents)[..., :audio.shape[-1]], latents, loss

    def spectral_distance(self, spectrum: Tensor, audio: Tensor) -> dict[str, Tensor]:
        """``spectral``'s reconstruction terms: the L1 of the log-magnitude frames and the
        spectral convergence of the magnitudes (the relative Frobenius distance)."""
        target = self.encoder.spectrum(audio)
        magnitude, true = spectrum.float().exp(), target.exp()
        return {"log_spectrum": F.l1_loss(spectrum.float(), target),
                "convergence": (magnitude - true).norm() / true.norm()}

    def encode(self, audio: Tensor, codebooks: int | None = None) -> Tensor:
        """rvq: codes int64 [B, k, T] of the first ``codebooks``; vae: latents [B, D, T] (the
        mean)."""
        h = self.encoder(audio)
        if self.quantizer is None:
            return h.chunk(2, dim=1)[0]
        return self.quantizer(h, codebooks or self.cfg.codebooks)[1]

    def decode(self, tokens: Tensor) -> Tensor:
        """Mono audio [B, T * hop] of codes [B, k, T] or latents [B, D, T]."""
        latents = tokens if self.quantizer is None else self.quantizer.lookup(tokens)
        return self.decoder(latents)[:, 0]

    def save_pretrained(self, folder: str | os.PathLike, extra: dict | None = None) -> None:
        """``folder/config.json`` (the config, ``model_type`` and ``extra``) and
        ``folder/model.safetensors``, each written atomically."""
        from safetensors.torch import save_file

        from soloist.io import atomic_path, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_json(folder / "config.json", {"model_type": MODEL_TYPE, **asdict(self.cfg),
                                            **(extra or {})})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> OwnCodec:
        """The codec in ``folder`` (safetensors: no pickle); unknown config keys are kept out
        of the architecture (a model card's, say)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        info = json.loads((folder / "config.json").read_text())
        known = OwnCodecConfig.__dataclass_fields__
        model = cls(OwnCodecConfig(**{k: v for k, v in info.items() if k in known}))
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return model
