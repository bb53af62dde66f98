"""Soloist: an encoder-decoder transformer from backing-track codes to solo codes.

The encoder reads the context (backing track) EnCodec codes [B, K, T]; the decoder writes the
target (solo) codes through a MusicGen-style delay pattern, all K codebooks of one step at a
time, cross-attending to the encoded context. Positions are rotary (RoPE) everywhere,
cross-attention included: decoder step s and context frame t meet with a relative offset s - t,
which is what "play along" needs, and RoPE needs no table, so a KV cache only has to know its
position offset. Pre-norm with RMSNorm, no biases, attention through
``F.scaled_dot_product_attention`` (flash on GPU when no mask is needed). Generation decodes
over a static ``Cache`` (soloist.generate); a model folder is ``config.json`` plus
``model.safetensors`` (``save_pretrained`` / ``from_pretrained``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DelayPattern:
    """Codebook k delayed by k steps after one leading empty step (MusicGen's "delay" pattern).

    Frame t of codebook k sits at step t + 1 + k of a sequence of T + K steps; every other
    position holds ``special`` (the codebook size, one past the last real code).
    """

    def __init__(self, codebooks: int, special: int):
        self.codebooks = codebooks
        self.special = special

    def frame_index(self, frames: int, device: torch.device | None = None) -> Tensor:
        """Frame each (codebook, step) holds, int64 [K, T + K]; < 0 or >= T where none."""
        steps = torch.arange(frames + self.codebooks, device=device)
        return steps[None] - 1 - torch.arange(self.codebooks, device=device)[:, None]

    def valid_mask(self, frames: int, lengths: Tensor | None = None,
                   device: torch.device | None = None) -> Tensor:
        """True where a real code sits: bool [K, T + K], or [B, K, T + K] given lengths [B].

        ``lengths`` are the unpadded frame counts; frames at or past them are invalid.
        """
        if lengths is not None:
            device = lengths.device
        frame = self.frame_index(frames, device)
        valid = (frame >= 0) & (frame < frames)
        if lengths is None:
            return valid
        return valid & (frame[None] < lengths[:, None, None])

    def build(self, codes: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Delayed codes [B, K, T + K] of codes [B, K, T]; padding past lengths [B] -> special."""
        B, K, T = codes.shape
        assert K == self.codebooks, f"expected {self.codebooks} codebooks, got {K}"
        out = codes.new_full((B, K, T + K), self.special)
        for k in range(K):
            out[:, k, 1 + k:1 + k + T] = codes[:, k]
        if lengths is not None:
            out = out.masked_fill(~self.valid_mask(T, lengths), self.special)
        return out

    def revert(self, delayed: Tensor) -> Tensor:
        """Codes [B, K, T] of delayed codes [B, K, T + K] (the inverse of ``build``)."""
        K = self.codebooks
        T = delayed.shape[-1] - K
        return torch.stack([delayed[:, k, 1 + k:1 + k + T] for k in range(K)], dim=1)


@dataclass
class ModelConfig:
    codebooks: int = 4
    card: int = 1024  # codebook size; id `card` is the special (empty/pad) token
    dim: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ff_mult: int = 4
    dropout: float = 0.0
    max_frames: int = 750  # longest window the model takes (RoPE itself has no limit)
    context_dropout: float = 0.1  # P(whole context -> learned null), for classifier-free guidance
    tags: list[int] = field(default_factory=list)  # ids per tag column, 0 ("none") included
    tag_dropout: float = 0.1  # P(a column's tag -> none), each apart: guidance per column
    latents: int = 0  # channels of continuous latents in and out (LatentSoloist); 0: codes
    mix: dict = field(default_factory=dict)  # task mix: the MaskMixer's loss weights


PRESETS = {
    "tiny": ModelConfig(dim=128, heads=4, encoder_layers=2, decoder_layers=2, max_frames=750),
    # 12.9M parameters: a model folder under 64 MB, for the GPU recipe's 300 songs
    "small": ModelConfig(dim=256, heads=2, encoder_layers=4, decoder_layers=6, max_frames=750),
    # head_dim 128 and no dropout: 35% -> 39% MFU on an H100 (16 x 10 s windows; BENCHMARKS.md)
    "base": ModelConfig(dim=1024, heads=8, encoder_layers=6, decoder_layers=8, dropout=0.0,
                        max_frames=1500),
}


def rope(positions: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, float32 [L, head_dim // 2] each, for positions [L]."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device) / head_dim)
    angles = positions.float()[:, None] * inv_freq
    return angles.cos(), angles.sin()


def rotate(x: Tensor, cos_sin: tuple[Tensor, Tensor]) -> Tensor:
    """x [B, L, H, head_dim] rotated pairwise (first half, second half) by the rope angles.

    In x's dtype: angles are exact in float32, the rotation itself is not precision-critical.
    Rotating before the heads are transposed keeps the kernel's memory access contiguous.
    """
    cos, sin = (t.to(x.dtype)[:, None] for t in cos_sin)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head attention of x [B, L, D] over itself or over a memory [B, M, D]."""

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()
        self.heads = cfg.heads
        self.dropout = cfg.dropout
        # self-attention projects q, k, v in one matmul; cross-attention q and (k, v) apart
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=False) if cross else None
        self.qkv = nn.Linear(cfg.dim, (2 if cross else 3) * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def split(self, x: Tensor) -> Tensor:
        """[B, L, D] -> [B, L, H, D // H]."""
        B, L, D = x.shape
        return x.view(B, L, self.heads, D // self.heads)

    def memory_kv(self, memory: Tensor, memory_pos: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values [B, H, M, D // H] of a memory [B, M, D]."""
        k, v = (self.split(t) for t in self.qkv(memory).chunk(2, dim=-1))
        return rotate(k, memory_pos).transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: Tensor, pos: tuple[Tensor, Tensor], memory: Tensor | None = None,
                memory_pos: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None,
                causal: bool = False, kv: tuple[Tensor, Tensor] | None = None,
                at: Tensor | None = None) -> Tensor:
        """Output [B, L, D]; mask bool, broadcastable to [B, H, L, keys] (True = attend).

        ``kv`` is a static cache: for self-attention [B, H, S, D // H] keys and values that
        x's own go into, at steps ``at`` [L], before attending to all S (``mask`` says which
        are real); for cross-attention the memory's, computed once by ``memory_kv``.
        """
        if self.q is None:
            q, k, v = (self.split(t) for t in self.qkv(x).chunk(3, dim=-1))
            q, k, v = rotate(q, pos).transpose(1, 2), rotate(k, pos).transpose(1, 2), \
                v.transpose(1, 2)
            if kv is not None:
                kv[0].index_copy_(2, at, k)
                kv[1].index_copy_(2, at, v)
                k, v = kv
        else:
            q = rotate(self.split(self.q(x)), pos).transpose(1, 2)
            k, v = kv if kv is not None else self.memory_kv(memory, memory_pos)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and x.shape[1] > 1)
        return self.out(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm layer: self-attention (a decoder's causal), cross-attention to the memory
    (decoder only), MLP."""

    def __init__(self, cfg: ModelConfig, decoder: bool, causal: bool | None = None):
        super().__init__()
        self.decoder = decoder
        self.causal = decoder if causal is None else causal
        self.norm1, self.attn = nn.RMSNorm(cfg.dim), Attention(cfg)
        if decoder:
            self.norm2, self.cross = nn.RMSNorm(cfg.dim), Attention(cfg, cross=True)
        self.norm3 = nn.RMSNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.ff_mult * cfg.dim, bias=False), nn.GELU(),
                                 nn.Linear(cfg.ff_mult * cfg.dim, cfg.dim, bias=False))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pos: tuple[Tensor, Tensor], mask: Tensor | None = None,
                memory: Tensor | None = None, memory_pos: tuple[Tensor, Tensor] | None = None,
                memory_mask: Tensor | None = None, kv: tuple | None = None,
                at: Tensor | None = None) -> Tensor:
        """x [B, L, D] -> [B, L, D]; kv is this layer's static (self, cross) keys and values,
        x then being steps ``at`` and ``mask`` which cached steps each of them sees."""
        self_kv, cross_kv = kv if kv is not None else (None, None)
        x = x + self.drop(self.attn(self.norm1(x), pos, mask=mask,
                                    causal=self.causal and kv is None, kv=self_kv, at=at))
        if self.decoder:
            x = x + self.drop(self.cross(self.norm2(x), pos, memory, memory_pos, memory_mask,
                                         kv=cross_kv))
        return x + self.drop(self.mlp(self.norm3(x)))


def codebook_losses(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Mean cross-entropy per codebook [K] over valid positions.

    logits [B, K, S, card], labels int64 [B, K, S] (anything where invalid), valid bool
    [B, K, S] or [K, S].
    """
    valid = valid.expand(labels.shape)
    # invalid labels may be the special token (== card): point them at class 0, then mask out.
    # [B, S, K] order: the model's logits are a [B, K, S] view of a [B, S, K] tensor
    ce = F.cross_entropy(logits.transpose(1, 2).reshape(-1, logits.shape[-1]).float(),
                         labels.masked_fill(~valid, 0).transpose(1, 2).reshape(-1),
                         reduction="none").view(labels.transpose(1, 2).shape).transpose(1, 2)
    ce = ce.masked_fill(~valid, 0.0)  # where() rather than multiply: an inf there must not leak
    return ce.sum(dim=(0, 2)) / valid.sum(dim=(0, 2)).clamp(min=1)


@dataclass
class Cache:
    """Static decoder state of B rows for one window, written in place (so that a CUDA graph
    can replay a decode step over it).

    self_kv: per decoder layer, self-attention keys and values [B, H, S, head_dim] of steps
    0..S-1, filled as steps are decoded; cross_kv: per layer, those of the encoded window
    [B, H, M, head_dim]; aligned [B, S, D]: the backing frames each step adds;
    memory_mask bool [B, 1, 1, M] (True = real frame).
    """

    self_kv: list[tuple[Tensor, Tensor]]
    cross_kv: list[tuple[Tensor, Tensor]]
    aligned: Tensor
    memory_mask: Tensor

    @property
    def steps(self) -> int:
        return self.aligned.shape[1]


# What a model of each task is for: the hint when another task's command is given one
USES = {"solo": "soloist accompany plays along with it",
        "continuation": "soloist continue extends recordings with it",
        "mix": "its mixes are on evaluate's listening page"}


def task_error(info: dict, wanted: str) -> str | None:
    """Why the model whose config is ``info`` cannot do task ``wanted``; None if it can."""
    task = info.get("task", "solo")
    return None if task == wanted else \
        f"the model was trained for task {task!r}, not {wanted}: {USES[task]}"


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message names the missing or bad file."""


class ModelFolder:
    """A model that is a folder: ``config.json`` (its ``ModelConfig`` under "model", beside
    ``info``) and ``model.safetensors``; ``build`` makes the model of a config."""

    cfg: ModelConfig
    info: dict
    step = 0  # the training step (the trainer sets it), for losses that change with it

    def save_pretrained(self, folder: str | os.PathLike, info: dict | None = None) -> None:
        """Write a model folder: ``model.safetensors`` and ``config.json`` (the model config
        under "model", beside ``info``, default ``self.info``: codec, roles, training)."""
        from safetensors.torch import save_file

        from soloist.io import atomic_path, write_json

        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_json(folder / "config.json",
                   {**(self.info if info is None else info), "model": asdict(self.cfg)})

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> Soloist:
        """The model of a model folder (``save_pretrained``'s: ``results/train``,
        ``results/publish``) or of a Hugging Face Hub repo id, in eval mode, with the rest
        of its config.json as ``info``. No pickle: safetensors and JSON only."""
        from safetensors.torch import load_file

        folder = Path(source)
        if not folder.is_dir():
            folder = _from_hub(str(source))
        config_file, weights_file = folder / "config.json", folder / "model.safetensors"
        for path in (config_file, weights_file):
            if not path.is_file():
                raise ModelFolderError(f"{path} is missing: a soloist model folder holds "
                                       "config.json and model.safetensors")
        try:
            info = json.loads(config_file.read_text())
            cfg = ModelConfig(**info.pop("model"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFolderError(f"{config_file} is not a soloist model config "
                                   f"({type(e).__name__}: {e})") from None
        try:
            state = load_file(weights_file)
        except Exception as e:  # safetensors' own error type for a bad header or short file
            raise ModelFolderError(f"{weights_file} is corrupt or incomplete ({e}); export or "
                                   "download the model again") from None
        with torch.device(device):
            model = build(cfg)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ModelFolderError(f"{weights_file} does not fit {config_file}: {e}") from None
        model.info = info
        return model.to(dtype=dtype).eval()


class Soloist(ModelFolder, nn.Module):
    """Context codes [B, K, T] -> target codes [B, K, T] through a delayed decoder."""

    loss_label = "mean CE over codebooks"  # what its training loss is, for the loss plot

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.dim % cfg.heads == 0 and (cfg.dim // cfg.heads) % 2 == 0
        self.cfg = cfg
        self.pattern = DelayPattern(cfg.codebooks, cfg.card)
        K, D = cfg.codebooks, cfg.dim
        self.context_emb, self.target_emb = self.input_layer(), self.input_layer()
        self.register_buffer("offsets", torch.arange(K)[:, None] * (cfg.card + 1),
                             persistent=False)
        self.null = nn.Parameter(torch.zeros(D))  # the encoded "no context" for CFG
        # one table for every tag column (condition.columns), as for the codebooks
        self.tag_emb = nn.Embedding(sum(cfg.tags), D) if cfg.tags else None
        self.register_buffer("tag_offsets", torch.tensor([0, *cfg.tags[:-1]]).cumsum(0),
                             persistent=False)
        self.align = nn.Linear(K * D, D, bias=False)  # backing frames s..s-K+1 -> step s
        self.encoder = nn.ModuleList(Block(cfg, decoder=False) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(Block(cfg, decoder=True) for _ in range(cfg.decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.RMSNorm(D), nn.RMSNorm(D)
        self.heads = self.output_layer()
        self.drop = nn.Dropout(cfg.dropout)
        # angles computed once: recomputing cos/sin inside every attention kernel is not free;
        # generation pads its buffers to a multiple of 16 steps, and so does the table
        cos, sin = rope(torch.arange(-(-(cfg.max_frames + K) // 16) * 16), D // cfg.heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        nn.init.normal_(self.null, std=0.02)
        self.info: dict = {}  # config.json beyond the model config: codec, roles, training

    @property
    def loss_names(self) -> list[str]:
        """What each of ``forward``'s parts of the loss is: a codebook's cross-entropy."""
        return [f"cb{k}" for k in range(self.cfg.codebooks)]

    def input_layer(self) -> nn.Module:
        """One table per role holding K codebooks of card + 1 rows each (id ``card`` is the
        pad token in the context, the special token in the target): one lookup for all K."""
        return nn.Embedding(self.cfg.codebooks * (self.cfg.card + 1), self.cfg.dim)

    def output_layer(self) -> nn.Module:
        """K heads in one matmul."""
        return nn.Linear(self.cfg.dim, self.cfg.codebooks * self.cfg.card, bias=False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def embed(self, table: nn.Embedding, codes: Tensor) -> Tensor:
        """Sum over codebooks of the embeddings [B, L, D] of codes int64 [B, K, L]."""
        return table(codes + self.offsets).sum(dim=1)

    def positions(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        """RoPE cos and sin [length, head_dim // 2] of positions start..start+length-1."""
        assert start + length <= len(self.rope_cos), "position past max_frames + codebooks"
        return self.rope_cos[start:start + length], self.rope_sin[start:start + length]

    def encode(self, context: Tensor, context_mask: Tensor | None = None,
               drop: Tensor | None = None, tags: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None]:
        """Memory [B, T, D] and its mask bool [B, T] (or None) of context codes [B, K, T].

        context_mask bool [B, T] is True on real frames (at least one per sample); drop bool
        [B] replaces a sample's whole memory by the learned null; tags int64 [B, columns]
        (0: none; default all none) are added to every frame. Added rather than prefixed: a
        prefix would sit ever farther (in RoPE's relative positions) from later frames.
        """
        B, _, T = context.shape
        x = self.frames_in(context, context_mask)
        if self.tag_emb is not None:
            if tags is None:
                tags = torch.zeros(B, len(self.cfg.tags), dtype=torch.long, device=x.device)
            x = x + self.tag_emb(tags + self.tag_offsets).sum(dim=1, keepdim=True)
        x = self.drop(x)
        pos = self.positions(0, T)
        mask = None if context_mask is None else context_mask[:, None, None]
        for block in self.encoder:
            x = block(x, pos, mask)
        x = self.encoder_norm(x)
        if drop is not None:
            x = torch.where(drop[:, None, None], self.null.to(x.dtype), x)
            if context_mask is not None:  # all-null memory: attending anywhere gives the null
                context_mask = context_mask | drop[:, None]
        return x, context_mask

    def frames_in(self, context: Tensor, context_mask: Tensor | None) -> Tensor:
        """The encoder's input [B, T, D] of context codes [B, K, T] (padding: the pad id)."""
        tokens = context.long()
        if context_mask is not None:
            tokens = tokens.masked_fill(~context_mask[:, None], self.cfg.card)
        return self.embed(self.context_emb, tokens)

    def steps_in(self, steps: Tensor) -> Tensor:
        """The decoder's input [B, L, D] of delayed steps [B, K, L]."""
        return self.embed(self.target_emb, steps)

    def steps_out(self, x: Tensor) -> Tensor:
        """Logits [B, K, L, card] of the decoder's output [B, L, D]."""
        B, L, _ = x.shape
        return self.heads(x).view(B, L, self.cfg.codebooks, self.cfg.card).transpose(1, 2)

    def aligned(self, memory: Tensor, memory_mask: Tensor | None, start: int,
                length: int) -> Tensor:
        """The backing frames each decoder step needs [B, L, D], for steps start..start+L-1.

        Backing and solo are time-aligned and step s predicts frame s - k of codebook k, so
        step s gets memory frames s, s-1, .., s-K+1 directly (zeros outside the memory or
        on padding); cross-attention alone takes long to discover that alignment.
        """
        K, M = self.cfg.codebooks, memory.shape[1]
        if memory_mask is not None:
            memory = memory * memory_mask[..., None]
        padded = F.pad(memory, (0, 0, K - 1, max(0, start + length - M)))
        frames = [padded[:, start + K - 1 - k:start + K - 1 - k + length] for k in range(K)]
        return self.align(torch.cat(frames, dim=-1))

    def decode(self, steps: Tensor, memory: Tensor | None = None,
               memory_mask: Tensor | None = None, cache: Cache | None = None,
               start: int | Tensor = 0) -> Tensor:
        """Logits [B, K, L, card] after delayed steps [B, K, L] at positions start..start+L-1.

        Causal; memory [B, M, D] with mask bool [B, M] from ``encode``, or a ``cache`` filled
        by ``fill_cache`` that keeps these steps' keys and values (``start`` may then be a
        0-dim tensor on the device, so that a CUDA graph can advance it).
        """
        L = steps.shape[-1]
        x = self.drop(self.steps_in(steps))
        if cache is None:
            x = x + self.aligned(memory, memory_mask, start, L)
            pos, at, self_mask = self.positions(start, L), None, None
            memory_pos = self.positions(0, memory.shape[1])
            memory_mask = None if memory_mask is None else memory_mask[:, None, None]
        else:
            at = start + torch.arange(L, device=steps.device)
            x = x + cache.aligned.index_select(1, at)
            pos, memory_pos = (self.rope_cos[at], self.rope_sin[at]), None
            self_mask = torch.arange(cache.steps, device=steps.device) <= at[:, None]
            memory_mask = cache.memory_mask
        for i, block in enumerate(self.decoder):
            x = block(x, pos, self_mask, memory, memory_pos, memory_mask,
                      None if cache is None else (cache.self_kv[i], cache.cross_kv[i]), at)
        return self.steps_out(self.decoder_norm(x))

    def new_cache(self, batch: int, steps: int, frames: int) -> Cache:
        """An empty ``Cache`` for ``batch`` rows, ``steps`` delayed steps and a memory of
        ``frames`` frames, in the weights' dtype and device."""
        weight = self.heads.weight
        H, D = self.cfg.heads, self.cfg.dim

        def zeros(n: int) -> tuple[Tensor, Tensor]:
            return (weight.new_zeros(batch, H, n, D // H), weight.new_zeros(batch, H, n, D // H))

        return Cache([zeros(steps) for _ in self.decoder], [zeros(frames) for _ in self.decoder],
                     weight.new_zeros(batch, steps, D),
                     torch.ones(batch, 1, 1, frames, dtype=torch.bool, device=weight.device))

    def fill_cache(self, cache: Cache, memory: Tensor, memory_mask: Tensor | None) -> None:
        """Put what every step of a window reads of the memory [B, M, D] (mask bool [B, M])
        into ``cache``: cross-attention keys and values, and the aligned backing frames."""
        memory_pos = self.positions(0, memory.shape[1])
        for block, (k, v) in zip(self.decoder, cache.cross_kv, strict=True):
            new_k, new_v = block.cross.memory_kv(memory, memory_pos)
            k.copy_(new_k)
            v.copy_(new_v)
        cache.aligned.copy_(self.aligned(memory, memory_mask, 0, cache.steps))
        cache.memory_mask.fill_(True)
        if memory_mask is not None:
            cache.memory_mask.copy_(memory_mask[:, None, None])

    def forward(self, context: Tensor, target: Tensor, context_mask: Tensor | None = None,
                target_lengths: Tensor | None = None, tags: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced loss, per-codebook losses [K] and logits [B, K, S, card].

        context [B, K, Tc] and target [B, K, T] codes (any int dtype); context_mask bool
        [B, Tc] (True = real frame); target_lengths int [B] (unpadded frames); tags int64
        [B, columns]. The decoder reads delayed steps 0..T+K-2 and predicts steps
        1..T+K-1, so S = T + K - 1.
        """
        T = target.shape[-1]
        memory, memory_mask = self.memory(context, context_mask, tags, T)
        if target_lengths is not None:
            target_lengths = target_lengths.to(target.device)
        delayed = self.pattern.build(target.long(), target_lengths)
        valid = self.pattern.valid_mask(T, target_lengths, device=target.device)
        logits = self.decode(delayed[..., :-1], memory, memory_mask)
        per_codebook = codebook_losses(logits, delayed[..., 1:], valid[..., 1:])
        return per_codebook.mean(), per_codebook, logits

    def memory(self, context: Tensor, context_mask: Tensor | None, tags: Tensor | None,
               frames: int) -> tuple[Tensor, Tensor | None]:
        """``encode`` for a teacher-forced pass of ``frames`` target frames: in training the
        context and each tag column dropped at their rates (for guidance)."""
        assert max(context.shape[-1], frames) <= self.cfg.max_frames, \
            "window longer than max_frames"
        drop = None
        if self.training and self.cfg.context_dropout > 0:
            drop = torch.rand(context.shape[0], device=context.device) < self.cfg.context_dropout
        if self.training and tags is not None and self.cfg.tag_dropout > 0:
            tags = tags.masked_fill(torch.rand(tags.shape, device=tags.device)
                                    < self.cfg.tag_dropout, 0)
        return self.encode(context, context_mask, drop, tags)

    def num_params(self) -> int:
        """All parameters, embeddings included."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, frames: int | None = None) -> float:
        """Training FLOPs (forward + backward) per frame of a (context, target) pair.

        6 per weight of the matmuls (embedding lookups are not) plus the attention scores and
        mixes over a window of ``frames`` (default max_frames): 12 * dim * frames per layer for
        encoder self, decoder self and cross-attention.
        """
        cfg = self.cfg
        frames = frames or cfg.max_frames
        embeddings = sum(m.weight.numel() for m in (self.context_emb, self.target_emb)
                         if isinstance(m, nn.Embedding))
        attention = 12 * cfg.dim * frames * (cfg.encoder_layers + 2 * cfg.decoder_layers)
        return 6 * (self.num_params() - embeddings) + attention

    def configure_optimizers(self, weight_decay: float, lr: float,
                             betas: tuple[float, float]) -> torch.optim.AdamW:
        """AdamW decaying matrices (linear and embedding weights) but not norms or the null."""
        return adamw(self, weight_decay, lr, betas)


class LatentSoloist(Soloist):
    """Context latents [B, D, T] -> the latents [B, D, T] that follow, regressed frame by frame.

    The codec encoder's continuous frames in and out (task.output: latents), D =
    cfg.latents: linear maps in place of the code embeddings and heads, no delay pattern
    (cfg.codebooks is 1), a mean squared error. Decoder step s reads frame s - 1 (step 0 the
    mean frame, ``first_step``) and predicts frame s.
    """

    loss_names = ["mse"]
    loss_label = "MSE of standardized latents"

    def __init__(self, cfg: ModelConfig):
        assert cfg.latents > 0 and cfg.codebooks == 1, "latents: one step per frame"
        super().__init__(cfg)
        # the model reads and predicts standardized frames, whatever the codec's scale, and
        # its MSE is in units of each channel's spread
        self.register_buffer("mean", torch.zeros(cfg.latents))  # set by set_scale
        self.register_buffer("std", torch.ones(cfg.latents))

    def first_step(self, rows: int) -> Tensor:
        """What decoder step 0 reads, [rows, latents, 1]: the mean frame (zeros, standardized)."""
        return self.mean[None, :, None].expand(rows, -1, 1)

    def standard(self, x: Tensor) -> Tensor:
        return standard(self, x).to(self.heads.weight.dtype)

    def input_layer(self) -> nn.Module:
        return nn.Linear(self.cfg.latents, self.cfg.dim, bias=False)

    def output_layer(self) -> nn.Module:
        return nn.Linear(self.cfg.dim, self.cfg.latents, bias=False)

    def frames_in(self, context: Tensor, context_mask: Tensor | None) -> Tensor:
        """The encoder's input [B, T, D] of context latents [B, latents, T] (padding: zeros)."""
        context = self.standard(context)
        if context_mask is not None:
            context = context * context_mask[:, None]
        return self.context_emb(context.transpose(1, 2))

    def steps_in(self, steps: Tensor) -> Tensor:
        """The decoder's input [B, L, D] of the frames before each step [B, latents, L]."""
        return self.target_emb(self.standard(steps).transpose(1, 2))

    def steps_out(self, x: Tensor) -> Tensor:
        """Predicted frames float32 [B, latents, L] of the decoder's output [B, L, D]."""
        return self.heads(x).transpose(1, 2).float() * self.std[:, None] + self.mean[:, None]

    def forward(self, context: Tensor, target: Tensor, context_mask: Tensor | None = None,
                target_lengths: Tensor | None = None, tags: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced mean squared error of the standardized frames, the same as a
        one-entry tensor [1] (where the codes' model has its per-codebook losses) and the
        predicted frames [B, latents, T].

        context [B, latents, Tc] and target [B, latents, T]; context_mask bool [B, Tc];
        target_lengths int [B] (unpadded frames; the error is over those alone); tags int64
        [B, columns].
        """
        T = target.shape[-1]
        memory, memory_mask = self.memory(context, context_mask, tags, T)
        target = target.float()
        steps = torch.cat([self.first_step(len(target)), target[..., :-1]], -1)
        predicted = self.decode(steps, memory, memory_mask)
        error = ((predicted - target) / self.std[:, None]).square().mean(dim=1)  # [B, T]
        valid = torch.ones_like(error, dtype=torch.bool) if target_lengths is None else \
            torch.arange(T, device=target.device) < target_lengths.to(target.device)[:, None]
        loss = error.masked_fill(~valid, 0.0).sum() / valid.sum().clamp(min=1)
        return loss, loss[None], predicted


def set_scale(model: nn.Module, mean: Tensor, std: Tensor) -> None:
    """Give a model of latents the training latents' per-channel mean and std [D]
    (``data.latent_scale``), kept in its ``mean`` and ``std`` buffers."""
    model.mean.copy_(mean)
    model.std.copy_(std)


def standard(model: nn.Module, x: Tensor) -> Tensor:
    """Latents [B, D, T] standardized by a model's ``mean`` and ``std`` [D]: float32."""
    return (x.float() - model.mean[:, None]) / model.std[:, None]


def build(cfg: ModelConfig) -> nn.Module:
    """The model of a config: ``MaskMixer`` for task mix, ``LatentSoloist`` for latents,
    else ``Soloist``."""
    if cfg.mix:
        from soloist.mix import MaskMixer

        return MaskMixer(cfg)
    return LatentSoloist(cfg) if cfg.latents else Soloist(cfg)


def adamw(model: nn.Module, weight_decay: float, lr: float,
          betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW decaying ``model``'s matrices (its linear, convolution and embedding weights)
    but not its norms, biases or vectors."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=params[0].is_cuda)


def _from_hub(repo_id: str) -> Path:
    """The local snapshot of a Hub model; a path that names no folder here is an error."""
    first = Path(repo_id).parts[0] if Path(repo_id).parts else ""
    if repo_id.count("/") != 1 or Path(first).exists() or repo_id.startswith(("/", ".")):
        raise ModelFolderError(f"{repo_id}: no such model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors",
                                                               "README.md"]))
    except Exception as e:  # offline, unknown repo, no access: all one message
        raise ModelFolderError(f"{repo_id}: no such model folder here, and the Hugging Face Hub "
                               f"did not give it ({type(e).__name__}: {e})") from None


PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU


def peak_bf16_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak (FLOP/s) for MFU, or None when unknown (and on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for gpu, f in PEAK_BF16_FLOPS.items() if gpu in name), None)
