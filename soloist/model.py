"""Soloist: an encoder-decoder transformer from backing-track codes to solo codes.

The encoder reads the context (backing track) EnCodec codes [B, K, T]; the decoder writes the
target (solo) codes through a MusicGen-style delay pattern, all K codebooks of one step at a
time, cross-attending to the encoded context. Positions are rotary (RoPE) everywhere,
cross-attention included: decoder step s and context frame t meet with a relative offset s - t,
which is what "play along" needs, and RoPE needs no table, so a KV cache only has to know its
position offset. Pre-norm with RMSNorm, no biases, attention through
``F.scaled_dot_product_attention`` (flash on GPU when no mask is needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


PRESETS = {
    "tiny": ModelConfig(dim=128, heads=4, encoder_layers=2, decoder_layers=2, max_frames=750),
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

    def forward(self, x: Tensor, pos: tuple[Tensor, Tensor], memory: Tensor | None = None,
                memory_pos: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None,
                causal: bool = False, cache: dict | None = None) -> Tensor:
        """Output [B, L, D]; mask bool [B, 1, 1, M] (True = attend).

        A self-attention ``cache`` grows by the new keys/values each call; a cross-attention
        one keeps the memory's keys/values from its first call.
        """
        if memory is None:
            q, k, v = (self.split(t) for t in self.qkv(x).chunk(3, dim=-1))
            q, k, v = rotate(q, pos).transpose(1, 2), rotate(k, pos).transpose(1, 2), \
                v.transpose(1, 2)
            if cache is not None:
                # causal below is only right from an empty cache or for a single new step
                assert "k" not in cache or x.shape[1] == 1
                if "k" in cache:
                    k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        else:
            q = rotate(self.split(self.q(x)), pos).transpose(1, 2)
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                k, v = (self.split(t) for t in self.qkv(memory).chunk(2, dim=-1))
                k, v = rotate(k, memory_pos).transpose(1, 2), v.transpose(1, 2)
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and x.shape[1] > 1)
        return self.out(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm layer: self-attention, cross-attention to the memory (decoder only), MLP."""

    def __init__(self, cfg: ModelConfig, decoder: bool):
        super().__init__()
        self.decoder = decoder
        self.norm1, self.attn = nn.RMSNorm(cfg.dim), Attention(cfg)
        if decoder:
            self.norm2, self.cross = nn.RMSNorm(cfg.dim), Attention(cfg, cross=True)
        self.norm3 = nn.RMSNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.ff_mult * cfg.dim, bias=False), nn.GELU(),
                                 nn.Linear(cfg.ff_mult * cfg.dim, cfg.dim, bias=False))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pos: tuple[Tensor, Tensor], mask: Tensor | None = None,
                memory: Tensor | None = None, memory_pos: tuple[Tensor, Tensor] | None = None,
                memory_mask: Tensor | None = None,
                cache: tuple[dict, dict] | None = None) -> Tensor:
        """x [B, L, D] -> [B, L, D]; cache is (self, cross) of this layer."""
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = x + self.drop(self.attn(self.norm1(x), pos, mask=mask, causal=self.decoder,
                                    cache=self_cache))
        if self.decoder:
            x = x + self.drop(self.cross(self.norm2(x), pos, memory, memory_pos, memory_mask,
                                         cache=cross_cache))
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


def sample(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0,
           generator: torch.Generator | None = None) -> Tensor:
    """One id per row of logits [N, card] -> int64 [N]; temperature 0 or top_k 1 is greedy."""
    if temperature <= 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p > 0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token once the more likely ones already cover top_p (the first always stays)
        drop = probs.cumsum(dim=-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


class Soloist(nn.Module):
    """Context codes [B, K, T] -> target codes [B, K, T] through a delayed decoder."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.dim % cfg.heads == 0 and (cfg.dim // cfg.heads) % 2 == 0
        self.cfg = cfg
        self.pattern = DelayPattern(cfg.codebooks, cfg.card)
        K, D = cfg.codebooks, cfg.dim
        # One table per role holding K codebooks of card + 1 rows each (id `card` is the pad
        # token in the context, the special token in the target): one lookup for all K.
        self.context_emb = nn.Embedding(K * (cfg.card + 1), D)
        self.target_emb = nn.Embedding(K * (cfg.card + 1), D)
        self.register_buffer("offsets", torch.arange(K)[:, None] * (cfg.card + 1),
                             persistent=False)
        self.null = nn.Parameter(torch.zeros(D))  # the encoded "no context" for CFG
        self.align = nn.Linear(K * D, D, bias=False)  # backing frames s..s-K+1 -> step s
        self.encoder = nn.ModuleList(Block(cfg, decoder=False) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(Block(cfg, decoder=True) for _ in range(cfg.decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.RMSNorm(D), nn.RMSNorm(D)
        self.heads = nn.Linear(D, K * cfg.card, bias=False)  # K heads in one matmul
        self.drop = nn.Dropout(cfg.dropout)
        # angles computed once: recomputing cos/sin inside every attention kernel is not free
        cos, sin = rope(torch.arange(cfg.max_frames + K), D // cfg.heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        nn.init.normal_(self.null, std=0.02)

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
               drop: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Memory [B, T, D] and its mask bool [B, T] (or None) of context codes [B, K, T].

        context_mask bool [B, T] is True on real frames (at least one per sample); drop bool
        [B] replaces a sample's whole memory by the learned null.
        """
        B, K, T = context.shape
        tokens = context.long()
        if context_mask is not None:
            tokens = tokens.masked_fill(~context_mask[:, None], self.cfg.card)
        x = self.drop(self.embed(self.context_emb, tokens))
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

    def decode(self, steps: Tensor, memory: Tensor, memory_mask: Tensor | None = None,
               cache: list[tuple[dict, dict]] | None = None, start: int = 0) -> Tensor:
        """Logits [B, K, L, card] after delayed steps [B, K, L] at positions start.. start+L-1.

        Causal; memory [B, M, D] with mask bool [B, M] from ``encode``.
        """
        L = steps.shape[-1]
        x = self.drop(self.embed(self.target_emb, steps))
        x = x + self.aligned(memory, memory_mask, start, L)
        pos = self.positions(start, L)
        memory_pos = self.positions(0, memory.shape[1])
        mask = None if memory_mask is None else memory_mask[:, None, None]
        for i, block in enumerate(self.decoder):
            x = block(x, pos, memory=memory, memory_pos=memory_pos, memory_mask=mask,
                      cache=None if cache is None else cache[i])
        B, K = x.shape[0], self.cfg.codebooks
        return self.heads(self.decoder_norm(x)).view(B, L, K, self.cfg.card).transpose(1, 2)

    def forward(self, context: Tensor, target: Tensor, context_mask: Tensor | None = None,
                target_lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced loss, per-codebook losses [K] and logits [B, K, S, card].

        context [B, K, Tc] and target [B, K, T] codes (any int dtype); context_mask bool
        [B, Tc] (True = real frame); target_lengths int [B] (unpadded frames). The decoder
        reads delayed steps 0..T+K-2 and predicts steps 1..T+K-1, so S = T + K - 1.
        """
        T = target.shape[-1]
        assert max(context.shape[-1], T) <= self.cfg.max_frames, "window longer than max_frames"
        drop = None
        if self.training and self.cfg.context_dropout > 0:
            drop = torch.rand(context.shape[0], device=context.device) < self.cfg.context_dropout
        memory, memory_mask = self.encode(context, context_mask, drop)
        if target_lengths is not None:
            target_lengths = target_lengths.to(target.device)
        delayed = self.pattern.build(target.long(), target_lengths)
        valid = self.pattern.valid_mask(T, target_lengths, device=target.device)
        logits = self.decode(delayed[..., :-1], memory, memory_mask)
        per_codebook = codebook_losses(logits, delayed[..., 1:], valid[..., 1:])
        return per_codebook.mean(), per_codebook, logits

    @torch.no_grad()
    def generate(self, context: Tensor, frames: int, context_mask: Tensor | None = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0,
                 seed: int | None = None, cfg_scale: float = 1.0,
                 use_cache: bool = True) -> Tensor:
        """Sampled target codes int64 [B, K, frames] for context codes [B, K, Tc].

        Steps through the T + K delayed steps, all K codebooks at once. cfg_scale != 1 mixes
        logits as uncond + cfg_scale * (cond - uncond), both passes in one batch. use_cache
        False recomputes the whole prefix each step (the slow reference).
        """
        assert frames <= self.cfg.max_frames, "frames longer than max_frames"
        was_training = self.training
        self.eval()
        B, K, card = context.shape[0], self.cfg.codebooks, self.cfg.card
        cfg = cfg_scale != 1.0
        if cfg:  # second half of the batch: the null context
            context = context.repeat(2, 1, 1)
            context_mask = None if context_mask is None else context_mask.repeat(2, 1)
            drop = torch.arange(2 * B, device=context.device) >= B
            memory, memory_mask = self.encode(context, context_mask, drop)
        else:
            memory, memory_mask = self.encode(context, context_mask)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=context.device).manual_seed(seed)
        valid = self.pattern.valid_mask(frames, device=context.device)  # [K, frames + K]
        seq = torch.full((B, K, frames + K), card, dtype=torch.long, device=context.device)
        cache = [({}, {}) for _ in self.decoder] if use_cache else None
        for s in range(1, frames + K):
            # step s is predicted from steps < s
            steps = seq[..., s - 1:s] if use_cache else seq[..., :s]
            if cfg:
                steps = steps.repeat(2, 1, 1)
            logits = self.decode(steps, memory, memory_mask, cache, start=s - 1 if use_cache else 0)
            logits = logits[:, :, -1]  # [B or 2B, K, card]
            if cfg:
                cond, uncond = logits.chunk(2)
                logits = uncond + cfg_scale * (cond - uncond)
            codes = sample(logits.flatten(0, 1), temperature, top_k, top_p, generator).view(B, K)
            seq[..., s] = torch.where(valid[:, s], codes, card)
        self.train(was_training)
        return self.pattern.revert(seq)

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
        embeddings = self.context_emb.weight.numel() + self.target_emb.weight.numel()
        attention = 12 * cfg.dim * frames * (cfg.encoder_layers + 2 * cfg.decoder_layers)
        return 6 * (self.num_params() - embeddings) + attention

    def configure_optimizers(self, weight_decay: float, lr: float,
                             betas: tuple[float, float]) -> torch.optim.AdamW:
        """AdamW decaying matrices (linear and embedding weights) but not norms or the null."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=params[0].is_cuda)


PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU


def peak_bf16_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak (FLOP/s) for MFU, or None when unknown (and on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for gpu, f in PEAK_BF16_FLOPS.items() if gpu in name), None)
