"""Training data: (context, target) token windows streamed from the WebDataset shards.

Training reads a resampled stream: every (rank, loader worker) draws shards at random with
its own seed, shuffles samples in a buffer and crops them to ``frames``; an "epoch" is a
fixed number of batches. All randomness comes from (seed, epoch, rank, worker), so a
resumed run rebuilds the same stream and skips the batches it already consumed.
Samples are decoded explicitly (npy without pickle, json); a corrupt sample or shard is
skipped, logged and counted, never fatal.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from webdataset.utils import make_seed, pytorch_worker_info

log = logging.getLogger("soloist.data")

_skipped = 0  # corrupt samples/shards skipped by this process (one count per loader worker)


def _skip(exn: Exception) -> bool:
    """webdataset handler: log and count the error, then continue with the next item."""
    global _skipped
    _skipped += 1
    log.warning("skipping corrupt data (%d so far in this worker): %s", _skipped, exn)
    return True


def decode(sample: dict) -> dict:
    """Raw tar members -> {key, context [K, T] int64, target [K, T] int64, meta} (latents:
    [D, T] float32)."""
    context = np.load(io.BytesIO(sample["context.npy"]), allow_pickle=False)
    target = np.load(io.BytesIO(sample["target.npy"]), allow_pickle=False)
    if context.ndim != 2 or context.shape != target.shape:
        raise ValueError(f"{sample['__key__']}: context {context.shape} != target {target.shape}")
    dtype = np.float32 if context.dtype.kind == "f" else np.int64
    return {"key": sample["__key__"], "context": context.astype(dtype),
            "target": target.astype(dtype), "meta": json.loads(sample["json"])}


def crop(sample: dict, frames: int, rng: random.Random | None) -> dict:
    """A ``frames``-long crop (random if ``rng``, else from the start) of context and target.

    A continuation pair (the next segment is the target) is cut where the two meet: the
    context's last frames and the target's first, so that one still follows the other."""
    if sample["meta"].get("task") == "continuation":
        return {**sample, "context": sample["context"][:, -frames:],
                "target": sample["target"][:, :frames], "start": 0}
    length = sample["context"].shape[1]
    start = rng.randint(0, length - frames) if rng and length > frames else 0
    return {**sample, "context": sample["context"][:, start:start + frames],
            "target": sample["target"][:, start:start + frames], "start": start}


def collate(samples: list[dict], frames: int, pad: int) -> dict:
    """Stack samples, padding short ones with ``pad``.

    Returns context, target [B, K, frames] int64 (latents: [B, D, frames] float32); lengths
    [B]; context_mask [B, frames] (True on real frames); keys; tags (each sample's {column:
    value}); meta (each sample's metadata).
    """
    first = torch.from_numpy(samples[0]["context"])
    context = torch.full((len(samples), first.shape[0], frames), pad, dtype=first.dtype)
    target = torch.full_like(context, pad)
    lengths = torch.tensor([s["context"].shape[1] for s in samples])
    for i, s in enumerate(samples):
        context[i, :, :lengths[i]] = torch.from_numpy(s["context"])
        target[i, :, :lengths[i]] = torch.from_numpy(s["target"])
    mask = torch.arange(frames)[None, :] < lengths[:, None]
    rank, _, worker, _ = pytorch_worker_info()
    return {"context": context, "target": target, "lengths": lengths, "context_mask": mask,
            "keys": [s["key"] for s in samples],
            "tags": [s["meta"].get("tags", {}) for s in samples],
            "meta": [s["meta"] for s in samples],
            "skipped": _skipped, "worker": f"{rank}/{worker}"}


def _shuffle_and_crop(frames: int, buffer: int, seed: int, epoch: int):
    def stage(samples: Iterable[dict]) -> Iterator[dict]:
        rank, _, worker, _ = pytorch_worker_info()
        rng = random.Random(make_seed(seed, epoch, rank, worker))
        pool: list[dict] = []
        for sample in samples:
            pool.append(sample)
            if len(pool) >= buffer:
                yield crop(pool.pop(rng.randrange(len(pool))), frames, rng)
    return stage


def train_loader(urls: list[str], *, batch_size: int, frames: int, pad: int, seed: int,
                 epoch: int, batches: int, workers: int = 2, shuffle_buffer: int = 256,
                 skip: int = 0) -> Iterator[dict]:
    """Batches of epoch ``epoch``: ``batches`` of them, the first ``skip`` already consumed."""
    stream = wds.DataPipeline(
        wds.ResampledShards(urls, seed=make_seed(seed, epoch), deterministic=True),
        wds.tarfile_to_samples(handler=_skip),
        wds.map(decode, handler=_skip),
        _shuffle_and_crop(frames, shuffle_buffer, seed, epoch),
        wds.batched(batch_size, collation_fn=lambda s: collate(s, frames, pad), partial=False),
    )
    # Each worker yields batches/workers batches: the loader's round robin keeps the order.
    per_worker = -(-batches // max(workers, 1))
    # Its own generator: creating a loader must not draw from the global RNG, or a resumed
    # run (which creates one at a different step) would drift from an uninterrupted one.
    loader = wds.WebLoader(stream.with_epoch(per_worker), batch_size=None,
                           num_workers=workers, generator=torch.Generator().manual_seed(seed),
                           pin_memory=torch.cuda.is_available())
    it = iter(loader)
    for _ in range(skip):
        next(it)
    for _ in range(batches - skip):
        yield next(it)


def latent_scale(urls: list[str], samples: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation, float32 [D] each, of the latents of the
    first ``samples`` samples of ``urls`` (contexts and targets, every frame), in shard
    order: the same for every run on the same shards."""
    stream = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=_skip),
                              wds.map(decode, handler=_skip))
    frames = [torch.from_numpy(np.concatenate([s["context"], s["target"]], -1))
              for s in itertools.islice(stream, samples)]
    if not frames:
        raise ValueError(f"no readable sample in {len(urls)} training shards ({urls[0]}, ...)")
    x = torch.cat(frames, -1).double()  # [D, all frames]
    return x.mean(-1).float(), x.std(-1).clamp(min=1e-8).float()


def eval_loader(urls: list[str], *, batch_size: int, frames: int, pad: int,
                workers: int = 0) -> Iterable[dict]:
    """Every sample of ``urls`` once, in order, cut to its first ``frames`` (for evaluation)."""
    stream = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=_skip),
        wds.map(decode, handler=_skip),
        wds.map(lambda s: crop(s, frames, None)),
        wds.batched(batch_size, collation_fn=lambda s: collate(s, frames, pad), partial=True),
    )
    return wds.WebLoader(stream, batch_size=None, num_workers=workers)
