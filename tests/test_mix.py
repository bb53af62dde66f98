"""The mixer of task mix: complementary masks, its scores, its losses and the critic's warm-up."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from soloist.mix import LOSSES, MaskMixer, energies, mix_metrics, mix_scores
from soloist.model import PRESETS, build

TINY = dataclasses.replace(PRESETS["tiny"], codebooks=1, card=0, latents=8, dim=32,
                           max_frames=64)


def mixer(**weights) -> MaskMixer:
    torch.manual_seed(0)
    return build(dataclasses.replace(TINY, mix={"adversarial": 0.1, "adversarial_from": 3}
                                     | weights))


def latents(seed: int, batch: int = 4, frames: int = 24) -> torch.Tensor:
    return torch.randn(batch, 8, frames, generator=torch.Generator().manual_seed(seed))


def test_the_masks_sum_to_one_and_make_the_mix():
    model, a, b = mixer().eval(), latents(1), latents(2)
    m = model.masks(a, b)
    assert m.shape == a.shape and ((m > 0) & (m < 1)).all()
    torch.testing.assert_close(model.mix(a, b), m * a + (1 - m) * b)
    # B's frames change A's mask: the masks read both sides
    assert not torch.allclose(model.masks(a, latents(3)), m)


def test_scores_count_the_energy_from_each_side():
    a, b = torch.ones(1, 2, 4), 2 * torch.ones(1, 2, 4)
    m = torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(1, 2, 4)
    exclusive = mix_scores(m * a, (1 - m) * b)
    assert exclusive["complementarity"] == 1  # every element from one side alone
    assert exclusive["balance"] == pytest.approx(1 / (1 + 4))  # A's energy 1 per element, B's 4
    shared = mix_scores(0.5 * a, 0.5 * a)
    assert (shared["complementarity"], shared["balance"]) == (0, 0.5)
    # padded frames count for nothing
    valid = torch.tensor([[True, True, False, False]])
    assert torch.equal(energies(m * a, (1 - m) * b, valid), torch.tensor([2.0, 8.0, 10.0]))


def test_the_critic_counts_from_its_warm_up_and_learns_apart_from_the_masks():
    model, a, b = mixer(), latents(1), latents(2)
    model.train()
    loss, parts, _ = model(a, b)
    assert [*LOSSES] == ["rms", "balance", "complementarity", "generator", "critic"]
    torch.testing.assert_close(loss, parts[0] + parts[1] + parts[2])  # step 0 < 3: no critic
    model.step = 3
    loss, parts, _ = model(a, b)
    torch.testing.assert_close(loss, parts[:3].sum() + 0.1 * parts[3] + parts[4])
    parts[3].backward()  # fooling the critic moves the masks, never the critic
    assert all(p.grad is None or not p.grad.any() for p in model.critic.parameters())
    assert model.to_mask.weight.grad.abs().sum() > 0


def test_training_makes_the_masks_more_complementary():
    model, a, b = mixer(adversarial=0.0, rms=0.0, balance=0.0), latents(1), latents(2)
    data = (a, b, None, torch.full((4,), 24))
    before = mix_metrics(model.eval(), data)["complementarity"]
    optimizer = model.configure_optimizers(0.0, 3e-3, (0.9, 0.95))
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        model(a, b)[0].backward()
        optimizer.step()
    after = mix_metrics(model.eval(), data)
    assert after["complementarity"] > before + 0.1
    # an even mix of the same segments is what the masks improve on
    assert after["complementarity"] > after["complementarity_even"]
