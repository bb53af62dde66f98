"""model: delay pattern, masked loss, overfitting one batch, context handling, model folders."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from soloist.model import PRESETS, DelayPattern, ModelFolderError, Soloist, codebook_losses

TINY = dataclasses.replace(PRESETS["tiny"], dropout=0.0, context_dropout=0.0)
K, CARD = TINY.codebooks, TINY.card


def random_codes(B: int, T: int, seed: int = 0, k: int = K) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CARD, (B, k, T), generator=g).to(torch.int16)


@pytest.fixture(scope="module")
def model() -> Soloist:
    torch.manual_seed(0)
    return Soloist(TINY).eval()


# -- delay pattern ---------------------------------------------------------------------------

def test_delay_pattern_by_hand():
    p = DelayPattern(codebooks=2, special=9)
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])
    delayed = p.build(codes)
    assert delayed.tolist() == [[[9, 1, 2, 3, 9], [9, 9, 4, 5, 6]]]
    assert p.valid_mask(3).tolist() == [[False, True, True, True, False],
                                        [False, False, True, True, True]]
    assert p.revert(delayed).tolist() == codes.tolist()
    padded = p.build(codes, lengths=torch.tensor([2]))
    assert padded.tolist() == [[[9, 1, 2, 9, 9], [9, 9, 4, 5, 9]]]


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 6), t=st.integers(0, 30), b=st.integers(1, 3), data=st.data())
def test_delay_pattern_round_trip(k, t, b, data):
    p = DelayPattern(k, CARD)
    codes = random_codes(b, t, seed=data.draw(st.integers(0, 99)), k=k)
    delayed = p.build(codes)
    assert delayed.shape == (b, k, t + k) and delayed.dtype == codes.dtype
    assert torch.equal(p.revert(delayed), codes)
    valid = p.valid_mask(t)
    assert valid.shape == (k, t + k) and valid.sum() == k * t
    assert torch.equal(delayed != CARD, valid.expand(b, -1, -1))  # special exactly off-pattern

    lengths = torch.tensor(data.draw(st.lists(st.integers(0, t), min_size=b, max_size=b)))
    padded = p.build(codes, lengths)
    valid = p.valid_mask(t, lengths)
    assert valid.shape == (b, k, t + k)
    assert valid.sum(dim=(1, 2)).tolist() == [k * n for n in lengths.tolist()]
    assert torch.equal(padded != CARD, valid)
    kept = torch.arange(t)[None, None] < lengths[:, None, None]
    assert torch.equal(p.revert(padded), codes.masked_fill(~kept, CARD))


# -- loss ------------------------------------------------------------------------------------

def test_loss_ignores_invalid_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 9, CARD, generator=g)
    labels = torch.randint(0, CARD, (2, K, 9), generator=g)
    valid = torch.rand(2, K, 9, generator=g) > 0.3
    base = codebook_losses(logits, labels, valid)
    assert base.shape == (K,)
    ok = valid[:, 1]
    expected = F.cross_entropy(logits[:, 1][ok], labels[:, 1][ok])
    torch.testing.assert_close(base[1], expected)

    logits2 = torch.where(valid[..., None], logits, 1e4 * torch.randn_like(logits))
    labels2 = torch.where(valid, labels, CARD)  # the special token, out of the heads' range
    torch.testing.assert_close(codebook_losses(logits2, labels2, valid), base)


def test_padded_target_tail_does_not_change_loss(model):
    context, target = random_codes(2, 20, seed=1), random_codes(2, 20, seed=2)
    lengths = torch.tensor([20, 12])
    loss, per_codebook, logits = model(context, target, target_lengths=lengths)
    assert per_codebook.shape == (K,) and logits.shape == (2, K, 20 + K - 1, CARD)
    assert torch.isclose(loss, per_codebook.mean())
    changed = target.clone()
    changed[1, :, 12:] = random_codes(1, 8, seed=3)[0]
    loss2, per_codebook2, _ = model(context, changed, target_lengths=lengths)
    assert torch.equal(per_codebook, per_codebook2)


def test_decoder_is_causal(model):
    memory, _ = model.encode(random_codes(1, 16, seed=4))
    steps = model.pattern.build(random_codes(1, 16, seed=5).long())
    changed = steps.clone()
    changed[..., 10:] = (changed[..., 10:] + 1) % CARD
    a, b = model.decode(steps, memory), model.decode(changed, memory)
    torch.testing.assert_close(a[:, :, :10], b[:, :, :10])
    assert not torch.allclose(a[:, :, 10:], b[:, :, 10:])


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = Soloist(TINY)
    optimizer = model.configure_optimizers(weight_decay=0.0, lr=3e-3, betas=(0.9, 0.95))
    context, target = random_codes(2, 40, seed=6), random_codes(2, 40, seed=7)
    first = loss = model(context, target)[0].item()
    for _ in range(300):
        loss, _, _ = model(context, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.1 * first:
            break
    assert loss.item() < 0.1 * first, (first, loss.item())


# -- context ---------------------------------------------------------------------------------

def test_context_changes_logits(model):
    target = random_codes(1, 16, seed=8)
    a = model(random_codes(1, 16, seed=9), target)[2]
    b = model(random_codes(1, 16, seed=10), target)[2]
    assert not torch.allclose(a, b)


def test_context_padding_is_masked(model):
    context, target = random_codes(2, 24, seed=11), random_codes(2, 24, seed=12)
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[1, 15:] = False
    logits = model(context, target, context_mask=mask)[2]
    changed = context.clone()
    changed[1, :, 15:] = -1  # not even a code: padding must never reach an embedding
    torch.testing.assert_close(model(changed, target, context_mask=mask)[2], logits)
    # padding is the same as leaving the frames out
    alone = model(context[1:, :, :15], target[1:])[2]
    torch.testing.assert_close(alone, logits[1:], atol=1e-5, rtol=1e-4)


def test_null_context_ignores_context():
    torch.manual_seed(0)
    model = Soloist(dataclasses.replace(TINY, context_dropout=1.0)).train()
    target = random_codes(1, 16, seed=13)
    a = model(random_codes(1, 16, seed=14), target)[2]
    b = model(random_codes(1, 16, seed=15), target)[2]
    torch.testing.assert_close(a, b)


# -- size and helpers ------------------------------------------------------------------------

def test_base_preset_size():
    with torch.device("meta"):
        base = Soloist(PRESETS["base"])
    assert 150e6 <= base.num_params() <= 250e6
    assert base.flops_per_token() > 6 * base.num_params() * 0.9


def test_configure_optimizers_decays_matrices_only(model):
    optimizer = model.configure_optimizers(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# -- model folders ---------------------------------------------------------------------------

INFO = {"codec": {"model": "encodec_24khz", "frame_rate": 75.0}, "weights": "random"}


def test_save_pretrained_then_from_pretrained_gives_identical_logits(model, tmp_path):
    model.save_pretrained(tmp_path, INFO)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Soloist.from_pretrained(tmp_path)
    assert loaded.cfg == model.cfg and loaded.info == INFO and not loaded.training
    context, target = random_codes(2, 20, seed=20), random_codes(2, 20, seed=21)
    assert torch.equal(loaded(context, target)[2], model(context, target)[2])
    import soloist  # the package exports the model, loaded on first use

    assert soloist.Soloist is Soloist


def test_a_bad_model_folder_names_the_file(model, tmp_path):
    model.save_pretrained(tmp_path, INFO)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:len(weights.read_bytes()) // 2])
    with pytest.raises(ModelFolderError, match=f"{weights} is corrupt or incomplete"):
        Soloist.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelFolderError, match=f"{tmp_path / 'config.json'} is missing"):
        Soloist.from_pretrained(tmp_path)
    with pytest.raises(ModelFolderError, match="no such model folder"):
        Soloist.from_pretrained(tmp_path / "nowhere")
