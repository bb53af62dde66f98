"""The codec soloist trains itself (``train_codec``): EnCodec's shape, weights that are yours.

A SEANet convolutional encoder and decoder (transformers' ``EncodecEncoder`` and
``EncodecDecoder``, the modules of EnCodec itself) around one of two bottlenecks:

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
from dataclasses import asdict, dataclass, field
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
        from transformers.models.encodec.modeling_encodec import EncodecDecoder, EncodecEncoder

        self.cfg = self.config = cfg
        vae = cfg.bottleneck == "vae"
        self.encoder = EncodecEncoder(cfg.seanet(cfg.dimension * (2 if vae else 1)))
        self.decoder = EncodecDecoder(cfg.seanet(cfg.dimension))
        self.quantizer = ResidualVQ(cfg) if not vae else None

    def forward(self, audio: Tensor, codebooks: int | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction [B, 1, N], the bottleneck's latents [B, D, T] (rvq: quantized; vae:
        a sample), the bottleneck's loss: commitment, or the KL per dimension and frame
        [D] averaged over batch and frames)."""
        h = self.encoder(audio)
        if self.quantizer is not None:
            latents, _, loss = self.quantizer(h, codebooks or self.cfg.codebooks)
        else:
            mean, logvar = h.chunk(2, dim=1)
            latents = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
            loss = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean((0, 2))
        return self.decoder(latents)[..., :audio.shape[-1]], latents, loss

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
