"""generate: sampling, the static cache against the uncached reference, windows and seams."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from soloist.generate import (
    Decoder,
    Sampling,
    generate,
    generate_long,
    grouped,
    guidance,
    guided,
    regress,
    sample,
    windows,
)
from soloist.model import PRESETS, LatentSoloist, Soloist, build

TINY = dataclasses.replace(PRESETS["tiny"], dropout=0.0, context_dropout=0.0)
CARD = TINY.card
GREEDY = Sampling(temperature=0)


def codes(B: int, K: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CARD, (B, K, T), generator=torch.Generator().manual_seed(seed))


def tiny(codebooks: int = 4, max_frames: int = 750) -> Soloist:
    torch.manual_seed(codebooks)
    return Soloist(dataclasses.replace(TINY, codebooks=codebooks, max_frames=max_frames)).eval()


@pytest.fixture(scope="module")
def model() -> Soloist:
    return tiny()


# -- sampling --------------------------------------------------------------------------------

def test_sample_greedy_limits():
    logits = torch.randn(5, CARD, generator=torch.Generator().manual_seed(0))
    u = torch.rand(5)
    best = logits.argmax(-1)
    assert torch.equal(sample(logits, u, GREEDY), best)
    assert torch.equal(sample(logits, u, Sampling(top_k=1)), best)
    assert torch.equal(sample(logits, u, Sampling(top_p=1e-6)), best)


def test_sampling_follows_the_truncated_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]]).expand(40000, -1)
    u = torch.rand(40000, generator=torch.Generator().manual_seed(0))
    for sampling, kept in ((Sampling(), 4), (Sampling(top_k=2), 2), (Sampling(top_p=0.7), 2),
                           (Sampling(temperature=0.5, top_k=3), 3)):
        probs = torch.zeros(4)
        probs[:kept] = (logits[0, :kept] / sampling.temperature).softmax(-1)
        freq = torch.bincount(sample(logits, u, sampling), minlength=4) / len(u)
        torch.testing.assert_close(freq, probs, atol=0.01, rtol=0), sampling


def test_generate_seeded_sampling(model):
    context = codes(2, 4, 30, seed=16)
    a = generate(model, context, 12, seed=1)
    assert a.shape == (2, 4, 12) and a.min() >= 0 and a.max() < CARD
    assert torch.equal(a, generate(model, context, 12, seed=1))
    assert not torch.equal(a, generate(model, context, 12, seed=2))


# -- the static cache against the reference ---------------------------------------------------

@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("sampling", [GREEDY, Sampling(top_k=50), Sampling(top_k=250, top_p=0.9),
                                      Sampling(cfg_scale=3.0), Sampling(cfg_scale=3.0, top_k=250)])
def test_static_cache_matches_the_uncached_reference(K, sampling):
    model = tiny(K)
    context = codes(2, K, 30, seed=17)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 20:] = False
    prompt = codes(2, K, 6, seed=18)
    for p in (None, prompt):
        fast = generate(model, context, 15, mask, sampling, seed=3, prompt=p)
        slow = generate(model, context, 15, mask, sampling, seed=3, prompt=p, use_cache=False)
        assert torch.equal(fast, slow), (sampling, p is not None)


def test_cfg_scale_zero_ignores_the_backing(model):
    null = Sampling(temperature=0, cfg_scale=0.0)  # only the null-context pass is left
    assert torch.equal(generate(model, codes(2, 4, 30, seed=19), 10, sampling=null),
                       generate(model, codes(2, 4, 30, seed=20), 10, sampling=null))


def tagged() -> Soloist:
    """A tiny model with two tag columns of 3 and 5 ids (condition.columns)."""
    torch.manual_seed(5)
    return Soloist(dataclasses.replace(TINY, tags=[3, 5])).eval()


@pytest.mark.parametrize("sampling", [Sampling(top_k=50, tag_cfg=(3.0, 1.0)),
                                      Sampling(top_k=50, cfg_scale=2.0, tag_cfg=(0.5, 2.0))])
def test_tag_guidance_matches_the_uncached_reference(sampling):
    model, context = tagged(), codes(2, 4, 30, seed=23)
    tags = torch.tensor([[1, 4], [2, 0]])
    fast = generate(model, context, 15, sampling=sampling, seed=3, tags=tags)
    slow = generate(model, context, 15, sampling=sampling, seed=3, tags=tags, use_cache=False)
    assert torch.equal(fast, slow)


def test_a_tag_scale_of_zero_ignores_that_tag_alone():
    model, context = tagged(), codes(1, 4, 30, seed=24)

    def solo(tags: list[int], tag_cfg: tuple[float, ...]) -> torch.Tensor:
        return generate(model, context, 20, sampling=Sampling(temperature=0, tag_cfg=tag_cfg),
                        tags=torch.tensor([tags]))

    assert not torch.equal(solo([1, 3], (1.0, 1.0)), solo([2, 3], (1.0, 1.0)))
    assert torch.equal(solo([1, 3], (0.0, 1.0)), solo([2, 3], (0.0, 1.0)))  # column 0 ignored
    assert not torch.equal(solo([1, 3], (0.0, 1.0)), solo([1, 1], (0.0, 1.0)))  # not column 1


@pytest.mark.parametrize("K", [1, 4])
def test_a_primed_window_keeps_its_prompt_in_every_codebook(K):
    """Under the delay pattern the high codebooks' last primed frames come at steps
    P+1..P+K-1, beside new frames of the low codebooks: they must stay the prompt."""
    model = tiny(K)
    decoder = Decoder(model, 2, 20, 20, Sampling(top_k=50))
    prompt = codes(2, K, 7, seed=21)
    noise = torch.rand(2, K, decoder.cache.steps)
    out = decoder.window(codes(2, K, 20, seed=22), torch.ones(2, 20, dtype=torch.bool),
                         [20, 12], prompt, noise)
    assert torch.equal(out[..., :7], prompt)
    assert (out[0] < CARD).all() and (out[1, :, :12] < CARD).all()
    assert (out[1, :, 12:] == CARD).all()  # past a row's length: the special code


# -- windows and seams ------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(frames=st.integers(1, 400), window=st.integers(2, 60), data=st.data())
def test_windows_cover_every_frame_once(frames, window, data):
    overlap = data.draw(st.integers(0, window - 1))
    spans = windows(frames, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == frames
    new = [range(0, spans[0][1])] + [range(s + overlap, e) for s, e in spans[1:]]
    assert sorted(f for r in new for f in r) == list(range(frames))  # none twice, none skipped
    assert all(0 < e - s <= window and len(r) > 0 for (s, e), r in zip(spans, new, strict=True))
    starts = [s for s, _ in spans]
    assert all(b - a == window - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_an_overlap_as_long_as_the_window_is_refused():
    with pytest.raises(ValueError, match="overlap .* must be shorter than the window"):
        windows(100, 40, 40)


@pytest.mark.parametrize("K", [1, 4])
def test_long_generation_chains_windows_at_their_seams(K):
    """Backings of 1x, 2.3x and 5x the window: each window's new frames are what the
    uncached reference generates from that window's backing, primed with the frames the
    previous window wrote."""
    W, P = 40, 10
    model = tiny(K, max_frames=W)
    backings = [codes(1, K, n, seed=n)[0] for n in (W, 92, 5 * W)]
    out = generate_long(model, backings, P, GREEDY, batch_size=2)
    for backing, solo in zip(backings, out, strict=True):
        assert solo.shape == backing.shape and (solo < CARD).all()
        spans = windows(backing.shape[-1], W, P)
        assert len(spans) == {W: 1, 92: 3, 5 * W: 7}[backing.shape[-1]]
        for w, (start, end) in enumerate(spans):
            primed = solo[None, :, start:start + P] if w else None
            ref = generate(model, backing[None, :, start:end], sampling=GREEDY, prompt=primed,
                           use_cache=False)
            new = P if w else 0
            assert torch.equal(ref[0, :, new:], solo[:, start + new:end]), (w, start, end)


def test_long_generation_is_seeded_per_backing():
    model = tiny(max_frames=40)
    backings = [codes(1, 4, n, seed=n)[0] for n in (50, 90, 130)]
    sampling = Sampling(top_k=50)
    together = generate_long(model, backings, 10, sampling, seeds=[7, 8, 9], batch_size=3)
    again = generate_long(model, backings, 10, sampling, seeds=[7, 8, 9], batch_size=2)
    alone = generate_long(model, backings[1:2], 10, sampling, seeds=[8])
    assert all(torch.equal(a, b) for a, b in zip(together, again, strict=True))
    assert torch.equal(together[1], alone[0])  # its solo does not depend on the others
    other = generate_long(model, backings[1:2], 10, sampling, seeds=[9])
    assert not torch.equal(alone[0], other[0])


# -- latents ---------------------------------------------------------------------------------

def latent_model(tags: list[int] | None = None) -> LatentSoloist:
    torch.manual_seed(5)
    return build(dataclasses.replace(TINY, codebooks=1, card=0, latents=16,
                                     tags=tags or [])).eval()


@pytest.mark.parametrize("sampling", [GREEDY, Sampling(cfg_scale=2.0, tag_cfg=(3.0, 0.0))])
def test_regressed_latents_are_what_the_uncached_decoder_predicts_from_them(sampling):
    model = latent_model([3, 5])
    model.mean.normal_(generator=torch.Generator().manual_seed(7))  # a training set's scale
    model.std.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(8))
    context = torch.randn(2, 16, 30, generator=torch.Generator().manual_seed(6))
    mask = torch.arange(30) < torch.tensor([[30], [22]])
    tags = torch.tensor([[1, 4], [2, 0]])
    frames = regress(model, context, 20, mask, sampling, tags)
    assert frames.shape == (2, 16, 20)
    # teacher-forced on its own output, the decoder predicts that output again
    groups = guidance(sampling, 2)
    memory, memory_mask = model.encode(*grouped(groups, context, mask, tags))
    steps = torch.cat([model.first_step(2), frames[..., :-1]], -1).repeat(len(memory) // 2, 1, 1)
    again = guided(groups, model.decode(steps, memory, memory_mask))
    torch.testing.assert_close(again, frames, rtol=1e-4, atol=1e-5)


def test_the_latents_loss_ignores_padded_frames():
    model = latent_model()
    context, target = torch.randn(2, 16, 12), torch.randn(2, 16, 12)
    loss, _, predicted = model(context, target, target_lengths=torch.tensor([12, 7]))
    padded = target.clone()
    padded[1, :, 7:] = 1e3
    assert torch.equal(model(context, padded, target_lengths=torch.tensor([12, 7]))[0], loss)
    error = (predicted - target).square().mean(1)
    torch.testing.assert_close(loss, torch.cat([error[0], error[1, :7]]).mean())


def test_latents_are_standardized_with_their_training_scale():
    model = latent_model()
    context, target = torch.randn(2, 16, 12), torch.randn(2, 16, 12)
    loss, _, predicted = model(context, target)
    std, mean = torch.rand(16) * 1000 + 1, torch.randn(16) * 50
    model.mean.copy_(mean)
    model.std.copy_(std)

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return x * std[:, None] + mean[:, None]

    loss_scaled, _, predicted_scaled = model(scaled(context), scaled(target))
    torch.testing.assert_close(loss_scaled, loss)
    torch.testing.assert_close(predicted_scaled, scaled(predicted), rtol=1e-4, atol=1e-3)
