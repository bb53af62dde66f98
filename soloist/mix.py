"""Task mix: two segments' latents mixed through complementary masks.

A mask generator reads the codec latents of A [B, D, T] and B [B, D, T]: A's frames attend
to themselves and, through cross-attention, to B's (encoded by their own self-attention).
A sigmoid gives A's mask m [B, D, T] per frame and channel; B's is 1 - m, so the two masks
sum to 1 by construction, and the mix m * a + (1 - m) * b is decoded by the codec.

Nothing says what the mix should be, so the losses shape it (weights in ``mix``):

- ``rms``: the mix is as loud as each side, (log rms(mix) - log rms(side))^2 for A and B;
- ``balance``: (balance - 0.5)^2, balance being the share of the mix's energy from A;
- ``complementarity``: 1 - complementarity, the share of the mix's energy that comes from
  exactly one side: per element, sum |a'^2 - b'^2| / sum (a'^2 + b'^2) with a' = m a and
  b' = (1 - m) b (1: each element from one side alone; 0: both give the same);
- ``adversarial``: a critic (strided convolutions over the latents) learns to tell real
  segments from mixes (hinge loss) and the masks learn to fool it, from step
  ``adversarial_from`` on. One optimizer steps both: the masks' term reads the critic
  through detached weights, the critic's reads a detached mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from soloist.model import Block, ModelConfig, ModelFolder, adamw, rope, standard

LOSSES = ("rms", "balance", "complementarity", "generator", "critic")


@dataclass(frozen=True)
class MixWeights:
    """The weight of each loss (``mix`` in the config), and the critic's warm-up in steps."""

    rms: float = 1.0
    balance: float = 1.0
    complementarity: float = 1.0
    adversarial: float = 0.0  # 0: no critic
    adversarial_from: int = 100


class Critic(nn.Module):
    """Real segment or mix? Scores [B, T / 8] of latents [B, D, T], higher for real."""

    def __init__(self, latents: int, dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(latents, dim, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(dim, dim, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(dim, dim, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(dim, 1, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.float())[:, 0]


class MaskMixer(ModelFolder, nn.Module):
    """Latents of A and B [B, D, T] -> their mix [B, D, T] through complementary masks.

    cfg.latents is D; cfg.encoder_layers self-attention layers read B, cfg.decoder_layers
    layers read A and cross-attend to B; cfg.mix holds the ``MixWeights``.
    """

    loss_names = LOSSES
    loss_label = "weighted sum of the mix losses"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg, self.weights = cfg, MixWeights(**cfg.mix)
        D = cfg.dim
        self.a_in = nn.Linear(cfg.latents, D, bias=False)
        self.b_in = nn.Linear(cfg.latents, D, bias=False)
        self.b_layers = nn.ModuleList(Block(cfg, decoder=False) for _ in range(cfg.encoder_layers))
        self.a_layers = nn.ModuleList(Block(cfg, decoder=True, causal=False)
                                      for _ in range(cfg.decoder_layers))
        self.norm = nn.RMSNorm(D)
        self.to_mask = nn.Linear(D, cfg.latents)
        self.critic = Critic(cfg.latents, D) if self.weights.adversarial > 0 else None
        # what it reads is standardized by the training latents' scale (model.set_scale);
        # the mix itself is in the codec's units
        self.register_buffer("mean", torch.zeros(cfg.latents))
        self.register_buffer("std", torch.ones(cfg.latents))
        self.info: dict = {}

    def masks(self, a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
        """A's mask m float32 [B, D, T] in (0, 1) for latents a, b [B, D, T] (B's: 1 - m);
        mask bool [B, T] is True on real frames of both."""
        T, dtype = a.shape[-1], self.a_in.weight.dtype
        pos = rope(torch.arange(T, device=a.device), self.cfg.dim // self.cfg.heads)
        keys = None if mask is None else mask[:, None, None]
        y = self.b_in(standard(self, b).transpose(1, 2).to(dtype))
        for layer in self.b_layers:
            y = layer(y, pos, keys)
        x = self.a_in(standard(self, a).transpose(1, 2).to(dtype))
        for layer in self.a_layers:
            x = layer(x, pos, keys, y, pos, keys)
        return torch.sigmoid(self.to_mask(self.norm(x)).float()).transpose(1, 2)

    def mix(self, a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
        """The mix float32 [B, D, T] of latents a, b [B, D, T]."""
        m = self.masks(a, b, mask)
        return m * a.float() + (1 - m) * b.float()

    def forward(self, context: Tensor, target: Tensor, context_mask: Tensor | None = None,
                target_lengths: Tensor | None = None, tags: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """The weighted loss, the losses [5] (``LOSSES``' order) and the mix [B, D, T] of
        A = context and B = target latents [B, D, T] (the trainer's argument order; tags:
        none, task mix takes no tags); target_lengths [B] the real frames of both."""
        a, b = context.float(), target.float()
        T = a.shape[-1]
        valid = None if target_lengths is None else \
            torch.arange(T, device=a.device) < target_lengths.to(a.device)[:, None]
        return self.losses(a, b, self.masks(a, b, valid), valid)

    def losses(self, a: Tensor, b: Tensor, m: Tensor, valid: Tensor | None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """``forward``'s outputs for latents a, b and A's mask m [B, D, T] (valid bool
        [B, T]: the real frames, or None)."""
        parts = m * a, (1 - m) * b
        mixed = parts[0] + parts[1]
        scores = mix_scores(*parts, valid)
        losses = [_rms_loss(mixed, a, b, valid), (scores["balance"] - 0.5).square(),
                  1 - scores["complementarity"], *self._adversarial(mixed, a, b)]
        w = self.weights
        on = float(self.training and self.step >= w.adversarial_from)
        loss = w.rms * losses[0] + w.balance * losses[1] + w.complementarity * losses[2] + \
            on * (w.adversarial * losses[3] + losses[4])
        return loss, torch.stack(losses), mixed

    def _adversarial(self, mixed: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """(the masks' loss: fool the critic, which it reads through detached weights; the
        critic's hinge loss on real segments and the detached mix). Zeros without one."""
        if self.critic is None:
            zero = mixed.new_zeros(())
            return zero, zero
        mixed, a, b = (standard(self, x) for x in (mixed, a, b))
        frozen = {k: v.detach() for k, v in self.critic.named_parameters()}
        generator = -functional_call(self.critic, frozen, (mixed,)).mean()
        real = torch.cat([self.critic(a), self.critic(b)])
        critic = F.relu(1 - real).mean() + F.relu(1 + self.critic(mixed.detach())).mean()
        return generator, critic

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, frames: int | None = None) -> float:
        """Training FLOPs per frame: 6 per weight, plus attention over ``frames``."""
        layers = self.cfg.encoder_layers + 2 * self.cfg.decoder_layers
        return 6 * self.num_params() + 12 * self.cfg.dim * (frames or self.cfg.max_frames) * layers

    def configure_optimizers(self, weight_decay: float, lr: float,
                             betas: tuple[float, float]) -> torch.optim.AdamW:
        return adamw(self, weight_decay, lr, betas)


def energies(a: Tensor, b: Tensor, valid: Tensor | None = None) -> Tensor:
    """The energy [3] of the masked sides a = m A and b = (1 - m) B [B, D, T] over the real
    frames (valid bool [B, T]): A's, B's, and the part from exactly one side."""
    ea, eb = a.float().square(), b.float().square()
    if valid is not None:
        ea, eb = ea * valid[:, None], eb * valid[:, None]
    return torch.stack([ea.sum(), eb.sum(), (ea - eb).abs().sum()])


def mix_scores(a: Tensor, b: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
    """Balance (the share of the energy from A) and complementarity (the share from exactly
    one side) of the masked sides (``energies``' arguments); 0-dim tensors."""
    e = energies(a, b, valid)
    total = (e[0] + e[1]).clamp(min=1e-12)
    return {"balance": e[0] / total, "complementarity": e[2] / total}


@torch.no_grad()
def mix_metrics(model: MaskMixer, data: tuple, batch_size: int = 16) -> dict:
    """Test loss, balance and complementarity over (A, B, mask, lengths) [N, D, T], and the
    complementarity of an even mix (both masks 0.5) of the same segments, to compare."""
    context, target, _, lengths = data
    masked, even, loss = torch.zeros(3), torch.zeros(3), 0.0
    for i in range(0, len(context), batch_size):
        a, b = context[i:i + batch_size].float(), target[i:i + batch_size].float()
        length = lengths[i:i + batch_size]
        valid = torch.arange(a.shape[-1]) < length[:, None]
        m = model.masks(a, b, valid)
        masked += energies(m * a, (1 - m) * b, valid)
        even += energies(a / 2, b / 2, valid)
        loss += float(model.losses(a, b, m, valid)[0]) * len(a)
    total = (masked[0] + masked[1]).clamp(min=1e-12)
    return {"loss": loss / len(context), "balance": float(masked[0] / total),
            "complementarity": float(masked[2] / total),
            "complementarity_even": float(even[2] / (even[0] + even[1]).clamp(min=1e-12))}


def _rms_loss(mixed: Tensor, a: Tensor, b: Tensor, valid: Tensor | None) -> Tensor:
    """Mean over samples of (log rms(mix) - log rms(side))^2, summed over both sides."""
    def log_rms(x: Tensor) -> Tensor:  # [B]
        energy = x.square().mean(1)
        if valid is not None:
            return 0.5 * ((energy * valid).sum(1) / valid.sum(1).clamp(min=1) + 1e-8).log()
        return 0.5 * (energy.mean(1) + 1e-8).log()

    mix = log_rms(mixed)
    return ((mix - log_rms(a)).square() + (mix - log_rms(b)).square()).mean()
