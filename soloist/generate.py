"""Generation: solo codes decoded step by step over a static KV cache, window by window.

One window (``Decoder``): the backing's codes are encoded once; the cross-attention keys and
values and the aligned backing frames go into a preallocated ``Cache``; each step writes its
own keys and values in place. The step index lives on the device, and sampling inverts the
CDF at uniform noise drawn before the window, so on a GPU a step is one CUDA graph, replayed
with no host sync.

Any length (``generate_long``): windows of the model's ``max_frames`` frames, each
overlapping the one before by ``overlap`` frames. A window's decoder is primed with the
previous window's last ``overlap`` frames (teacher-forced into the cache in one pass) while
its encoder reads the backing of its own span. Under the delay pattern, steps 1..P of a
window primed with P frames hold primed codes only; steps P+1..P+K-1 hold new frames of the
low codebooks beside primed frames of the high ones, which stay as they are.

Latents (``regress``): a ``LatentSoloist`` predicts each frame from those before it over
the same cache, and nothing is sampled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from soloist.model import LatentSoloist, Soloist


@dataclass(frozen=True)
class Sampling:
    """How each code is drawn: temperature 0 or top_k 1 is greedy; cfg_scale != 1 mixes
    logits as uncond + cfg_scale * (cond - uncond), uncond without the context; tag_cfg
    likewise per tag column (its scale, uncond without that column's tag). All passes run
    in one batch."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    cfg_scale: float = 1.0
    tag_cfg: tuple[float, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_k == 1


PLAIN = Sampling()  # temperature 1, no truncation, no guidance

Groups = list[tuple[int | None, float]]


def guidance(sampling: Sampling, columns: int) -> Groups:
    """The row groups that guidance decodes beside the conditioned one, as (what it drops,
    its weight = scale - 1): None drops the context, c tag column c's tag."""
    groups: Groups = [(None, sampling.cfg_scale - 1)] if sampling.cfg_scale != 1 else []
    return groups + [(c, s - 1) for c, s in enumerate(sampling.tag_cfg[:columns]) if s != 1]


def grouped(groups: Groups, context: Tensor, mask: Tensor | None, tags: Tensor | None
            ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The encoder's inputs for every group, stacked: context [G B, K, M], mask [G B, M],
    drop bool [G B] (None: no group drops the context) and tags [G B, columns]."""
    G, B = 1 + len(groups), context.shape[0]
    context = context.repeat(G, 1, 1)
    mask = None if mask is None else mask.repeat(G, 1)
    tags = None if tags is None else tags.repeat(G, 1)
    drop = torch.zeros(G * B, dtype=torch.bool, device=context.device)
    for g, (column, _) in enumerate(groups, start=1):
        if column is None:
            drop[g * B:(g + 1) * B] = True
        elif tags is not None:
            tags[g * B:(g + 1) * B, column] = 0
    return context, mask, drop if drop.any() else None, tags


def guided(groups: Groups, logits: Tensor) -> Tensor:
    """Logits [B, ...] of the groups' stacked logits [G B, ...]: the conditioned ones pushed
    away from each group's by its weight."""
    B = logits.shape[0] // (1 + len(groups))
    out = logits[:B]
    for g, (_, weight) in enumerate(groups, start=1):
        out = out + weight * (logits[:B] - logits[g * B:(g + 1) * B])
    return out


def sample(logits: Tensor, uniform: Tensor, sampling: Sampling) -> Tensor:
    """One id per row of logits [N, card] -> int64 [N]: the inverse CDF of the tempered,
    top-k and top-p truncated distribution at ``uniform`` [N] in [0, 1).

    Drawn so, the same noise gives the same ids on any device, and no random number
    generator runs inside a CUDA graph.
    """
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if sampling.top_p > 0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token once the more likely ones already cover top_p (the first always stays)
        drop = probs.cumsum(dim=-1) - probs > sampling.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    # right=True: a value never lands on a token of probability 0
    ids = torch.searchsorted(cdf, (uniform[:, None] * cdf[:, -1:]).contiguous(), right=True)
    return ids[:, 0].clamp(max=logits.shape[-1] - 1)


def _round16(n: int) -> int:
    """Buffers whose attention masks are a multiple of 16 long keep the fused kernels."""
    return -(-n // 16) * 16


class Decoder:
    """Decodes windows of up to ``frames`` frames over a memory of up to ``memory`` frames
    for ``batch`` rows, in buffers allocated once and reused window after window.

    ``graph`` (default: on a GPU) replays each step as a CUDA graph; ``compile`` fuses the
    step's kernels with ``torch.compile`` first.
    """

    def __init__(self, model: Soloist, batch: int, frames: int, memory: int | None = None,
                 sampling: Sampling = PLAIN, graph: bool | None = None,
                 compile: bool = False):
        cfg = model.cfg
        self.model, self.sampling, self.batch, self.frames = model, sampling, batch, frames
        self.memory = _round16(memory or frames)
        self.groups = guidance(sampling, len(cfg.tags))
        device = model.heads.weight.device
        self.cache = model.new_cache((1 + len(self.groups)) * batch,
                                     _round16(frames + cfg.codebooks), self.memory)
        shape = (batch, cfg.codebooks, self.cache.steps)
        self.seq = torch.full(shape, cfg.card, dtype=torch.long, device=device)  # delayed steps
        self.forced = torch.zeros(shape, dtype=torch.bool, device=device)  # primed: kept
        self.valid = torch.zeros_like(self.forced)  # a real frame sits there
        self.noise = torch.zeros(shape, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)  # the step being read
        self.use_graph = device.type == "cuda" if graph is None else graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self._step = torch.compile(self.step, fullgraph=True, dynamic=False) if compile \
            else self.step

    def step(self) -> None:
        """Read step ``pos``, predict step ``pos + 1`` (unless it is primed), advance."""
        model, card = self.model, self.model.cfg.card
        now, nxt = self.pos.view(1), self.pos.view(1) + 1
        steps = self.seq.index_select(2, now).repeat(1 + len(self.groups), 1, 1)  # [G B, K, 1]
        logits = model.decode(steps, cache=self.cache, start=self.pos)[:, :, 0].float()
        logits = guided(self.groups, logits)
        codes = sample(logits.flatten(0, 1), self.noise.index_select(2, nxt).flatten(),
                       self.sampling).view(self.seq.shape[0], -1, 1)
        codes = torch.where(self.valid.index_select(2, nxt), codes, card)
        codes = torch.where(self.forced.index_select(2, nxt), self.seq.index_select(2, nxt),
                            codes)
        self.seq.index_copy_(2, nxt, codes)
        self.pos.add_(1)

    def _capture(self) -> None:
        """Record one step as a CUDA graph, after warm-up steps on a side stream (as capture
        needs); they only write buffers that every window sets again before reading."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.pos.zero_()
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    @torch.no_grad()
    def window(self, context: Tensor, context_mask: Tensor, lengths: list[int],
               prompt: Tensor | None = None, noise: Tensor | None = None,
               tags: Tensor | None = None) -> Tensor:
        """Codes int64 [B, K, frames] for context codes [B, K, M] with mask bool [B, M]
        (True on real frames, at least one per row).

        Row b gets ``lengths[b]`` frames (special codes after them); its first P frames are
        ``prompt`` [B, K, P], kept as they are; ``noise`` [B, K, steps] is uniform in [0, 1)
        (unused when greedy); ``tags`` int64 [B, columns] are the model's tag ids.
        """
        model, (B, K, M) = self.model, context.shape
        card = model.cfg.card
        assert B == self.batch and M <= self.memory and max(lengths) <= self.frames
        if self.use_graph and self.graph is None:
            self._capture()
        context = F.pad(context.long(), (0, self.memory - M), value=card)
        mask = F.pad(context_mask, (0, self.memory - M), value=False)
        model.fill_cache(self.cache, *model.encode(*grouped(self.groups, context, mask, tags)))

        P = 0 if prompt is None else prompt.shape[-1]
        primed = context.new_full((B, K, self.frames), card)
        if P:
            primed[..., :P] = prompt
        tail = self.cache.steps - self.frames - K
        self.seq.copy_(F.pad(model.pattern.build(primed), (0, tail), value=card))
        for buffer, n in ((self.forced, [P] * B), (self.valid, lengths)):
            n = torch.tensor(n, device=context.device)
            buffer.copy_(F.pad(model.pattern.valid_mask(self.frames, n), (0, tail)))
        if noise is not None:
            self.noise.copy_(noise)
        if P:  # teacher-forced: steps 0..P-1 hold primed frames only
            steps = self.seq[..., :P]
            model.decode(steps.repeat(1 + len(self.groups), 1, 1), cache=self.cache)
        self.pos.fill_(P)
        for _ in range(max(lengths) + K - 1 - P):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        return model.pattern.revert(self.seq[..., :self.frames + K])


def _noise(seed: int | None, shape: tuple[int, ...]) -> Tensor:
    """Uniform noise on the CPU, so that a seed gives the same solo on any device."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator)


@torch.no_grad()
def generate(model: Soloist, context: Tensor, frames: int | None = None,
             context_mask: Tensor | None = None, sampling: Sampling = PLAIN,
             seed: int | None = None, prompt: Tensor | None = None, use_cache: bool = True,
             graph: bool | None = None, tags: Tensor | None = None) -> Tensor:
    """Sampled target codes int64 [B, K, frames] for context codes [B, K, Tc] in one window.

    ``frames`` (default Tc) is at most the model's max_frames; context_mask bool [B, Tc] is
    True on real frames; the first P frames are ``prompt`` [B, K, P] when given; tags int64
    [B, columns] are the model's tag ids. use_cache False decodes the whole prefix again at
    every step: the slow reference.
    """
    B, K, Tc = context.shape
    frames = Tc if frames is None else frames
    assert frames <= model.cfg.max_frames, "frames longer than max_frames"
    noise = _noise(seed, (B, K, frames + K)).to(context.device)
    if not use_cache:
        return _reference(model, context, frames, context_mask, sampling, noise, prompt, tags)
    if context_mask is None:
        context_mask = torch.ones(B, Tc, dtype=torch.bool, device=context.device)
    decoder = Decoder(model, B, frames, Tc, sampling, graph)
    noise = F.pad(noise, (0, decoder.cache.steps - frames - K))
    return decoder.window(context, context_mask, [frames] * B, prompt, noise, tags)


@torch.no_grad()
def regress(model: LatentSoloist, context: Tensor, frames: int,
            context_mask: Tensor | None = None, sampling: Sampling = PLAIN,
            tags: Tensor | None = None) -> Tensor:
    """The latents float32 [B, D, frames] that follow context latents [B, D, Tc], in one
    window, each frame predicted from those before it. Nothing is sampled, so temperature,
    top_k and top_p do not apply; guidance (cfg_scale, tag_cfg) does, on the frames."""
    B = context.shape[0]
    assert frames <= model.cfg.max_frames, "frames longer than max_frames"
    groups = guidance(sampling, len(model.cfg.tags))
    memory, memory_mask = model.encode(*grouped(groups, context, context_mask, tags))
    cache = model.new_cache(len(memory), frames, memory.shape[1])
    model.fill_cache(cache, memory, memory_mask)
    step, out = model.first_step(len(memory)), []
    for s in range(frames):
        out.append(guided(groups, model.decode(step, cache=cache, start=s).float()))
        step = out[-1].repeat(len(memory) // B, 1, 1)
    return torch.cat(out, -1)


def _reference(model: Soloist, context: Tensor, frames: int, context_mask: Tensor | None,
               sampling: Sampling, noise: Tensor, prompt: Tensor | None,
               tags: Tensor | None) -> Tensor:
    """``generate`` without a cache: each step decodes every step before it again."""
    B, K, card = context.shape[0], model.cfg.codebooks, model.cfg.card
    groups = guidance(sampling, len(model.cfg.tags))
    memory, memory_mask = model.encode(*grouped(groups, context, context_mask, tags))
    valid = model.pattern.valid_mask(frames, device=context.device)  # [K, frames + K]
    frame = model.pattern.frame_index(frames, device=context.device)
    seq = torch.full((B, K, frames + K), card, dtype=torch.long, device=context.device)
    for s in range(1, frames + K):
        steps = seq[..., :s]
        logits = model.decode(steps.repeat(len(memory) // B, 1, 1), memory, memory_mask)
        logits = guided(groups, logits[:, :, -1].float())
        codes = sample(logits.flatten(0, 1), noise[..., s].flatten(), sampling).view(B, K)
        seq[..., s] = torch.where(valid[:, s], codes, card)
        for k in range(K):  # primed frames stay as they are
            if prompt is not None and 0 <= frame[k, s] < prompt.shape[-1]:
                seq[:, k, s] = prompt[:, k, frame[k, s]]
    return model.pattern.revert(seq)


def windows(frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Spans [start, end) covering ``frames`` frames: ``window`` long (the last one may be
    shorter), each starting ``window - overlap`` after the one before."""
    if not 0 <= overlap < window:
        raise ValueError(f"the overlap ({overlap} frames) must be shorter than the window "
                         f"({window} frames)")
    spans = [(0, min(window, frames))]
    while spans[-1][1] < frames:
        start = spans[-1][0] + window - overlap
        spans.append((start, min(start + window, frames)))
    return spans


@torch.no_grad()
def generate_long(model: Soloist, backings: list[Tensor], overlap: int,
                  sampling: Sampling = PLAIN, seeds: list[int] | None = None,
                  batch_size: int = 8, graph: bool | None = None, compile: bool = False,
                  progress: Callable[[int, int], None] | None = None,
                  tags: list[Tensor] | None = None) -> list[Tensor]:
    """Solo codes int64 [K, N] for each backing's codes [K, N], N >= 1, window by window.

    Windows are the model's max_frames long and overlap by ``overlap`` frames; up to
    ``batch_size`` backings are decoded side by side, the longest together. ``seeds[i]``
    seeds backing i's noise, so its solo does not depend on the others'; ``tags[i]`` int64
    [columns] are its tag ids. ``progress(i, n)`` is called when backing i has n frames.
    """
    W, K, card = model.cfg.max_frames, model.cfg.codebooks, model.cfg.card
    device = model.heads.weight.device
    seeds = list(range(len(backings))) if seeds is None else seeds
    out = [torch.full((K, b.shape[-1]), card, dtype=torch.long) for b in backings]
    order = sorted(range(len(backings)), key=lambda i: -backings[i].shape[-1])
    B = min(batch_size, len(backings))
    decoder = Decoder(model, B, W, W, sampling, graph, compile)
    for first in range(0, len(order), B):
        group = order[first:first + B]
        spans = {i: windows(backings[i].shape[-1], W, overlap) for i in group}
        generators = {i: torch.Generator().manual_seed(seeds[i]) for i in group}
        for w in range(max(len(s) for s in spans.values())):
            context = torch.full((B, K, W), card, dtype=torch.long)
            mask = torch.zeros(B, W, dtype=torch.bool)
            mask[:, 0] = True  # rows without a window still attend somewhere
            prompt = torch.full((B, K, overlap), card, dtype=torch.long)
            noise = torch.zeros(B, K, decoder.cache.steps)
            tag_ids = torch.zeros(B, len(model.cfg.tags), dtype=torch.long)
            lengths, rows = [0] * B, []
            for r, i in enumerate(group):
                if w >= len(spans[i]):
                    continue
                start, end = spans[i][w]
                context[r, :, :end - start] = backings[i][:, start:end]
                mask[r, :end - start] = True
                prompt[r] = out[i][:, start:start + overlap]
                noise[r, :, :W + K] = torch.rand((K, W + K), generator=generators[i])
                if tags is not None:
                    tag_ids[r] = tags[i]
                lengths[r] = end - start
                rows.append((r, i, start, end))
            codes = decoder.window(context.to(device), mask.to(device), lengths,
                                   prompt.to(device) if w else None, noise.to(device),
                                   tag_ids.to(device)).cpu()
            new = overlap if w else 0  # frames before it are the previous window's
            for r, i, start, end in rows:
                out[i][:, start + new:end] = codes[r, :, new:end - start]
                if progress is not None:
                    progress(i, end)
    return out
