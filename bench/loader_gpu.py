"""Loader vs model: samples/s the training loader delivers vs samples/s the model consumes.

The loader side streams synthetic WebDataset shards in the real layout (per sample
``context.npy``, ``target.npy`` int16 [K, T] and a ``json`` of window metadata, written as
soloist.shard does) through ``soloist.data.train_loader``: shard resampling, decoding,
shuffle buffer, crop, collation, pinned memory on CUDA. It is timed after every worker
has delivered its first batches (start-up is reported apart). The consumption side is
bench/train_throughput.py's ``measure``: a bf16 training step of the preset on the GPU,
eager and compiled, on batches already on the device.

    PYTHONPATH=. python3 bench/loader_gpu.py [--workers 1 2 4 8] [--compile both]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from train_throughput import measure  # bench/ is on sys.path when this script runs

from soloist.data import train_loader
from soloist.model import PRESETS

ROOT = Path(__file__).resolve().parent.parent
CARD, CODEBOOKS, RATE = 1024, 4, 75.0


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_shards(folder: Path, shards: int, samples: int, frames: int, seed: int = 0
                 ) -> list[str]:
    """``shards`` tars of ``samples`` random (context, target) windows; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(shards):
        path = folder / f"shard-{s:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(samples):
                key = f"track{s:03d}_{i // 20:03d}~{i % 20:05d}"
                codes = rng.integers(0, CARD, (2, CODEBOOKS, frames), dtype=np.int16)
                # the metadata soloist.shard writes, with plausible values: its size counts
                meta = {"key": key, "track": key[:-6], "row": str(i), "split": "train",
                        "window": i % 20, "start": 2.5 * (i % 20), "end": 2.5 * (i % 20) + 10,
                        "frame_start": round(2.5 * (i % 20) * RATE), "frames": frames,
                        "frame_rate": RATE, "active_fraction": 0.93,
                        "context_active_fraction": 0.98, "target_rms_db": -21.4,
                        "context_rms_db": -17.9, "title": f"Synthetic track {s}",
                        "source": f"/data/music/synthetic_{s:03d}.flac", "weights": "random"}
                for name, data in ((f"{key}.context.npy", _npy(codes[0])),
                                   (f"{key}.target.npy", _npy(codes[1])),
                                   (f"{key}.json", json.dumps(meta, sort_keys=True).encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        urls.append(str(path))
    return urls


def loader_rate(urls: list[str], workers: int, batch: int, frames: int, batches: int,
                shuffle_buffer: int) -> tuple[float, float]:
    """(start-up seconds, steady samples/s) of ``batches`` batches after the warm-up ones."""
    warm = 2 * max(workers, 1)  # each worker's first batch waits for its shuffle buffer
    start = time.perf_counter()
    it = train_loader(urls, batch_size=batch, frames=frames, pad=CARD, seed=0, epoch=0,
                      batches=warm + batches, workers=workers, shuffle_buffer=shuffle_buffer)
    for _ in range(warm):
        next(it)
    steady = time.perf_counter()
    n = sum(b["context"].shape[0] for b in it)
    end = time.perf_counter()
    return steady - start, n / (end - steady)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="loader worker counts (default: config's train.workers, 1, 4, 8)")
    ap.add_argument("--batch", type=int, default=32, help="README's GPU setting: 32 x 10 s")
    ap.add_argument("--frames", type=int, default=750)
    ap.add_argument("--batches", type=int, default=200, help="timed loader batches per run")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--samples", type=int, default=1000, help="per shard (shard.max_samples)")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--compile", choices=["no", "yes", "both"], default="both")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    args = ap.parse_args()
    train = yaml.safe_load(args.config.read_text())["train"]
    workers = args.workers or sorted({train["workers"], 1, 4, 8})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, bf16 autocast: {device.type == 'cuda'}, "
          f"batch {args.batch} x {args.frames} frames, shuffle_buffer "
          f"{train['shuffle_buffer']}, config workers {train['workers']}", flush=True)
    print(f"{'side':<30}{'workers':>8}{'start-up s':>12}{'samples/s':>12}")

    loader = {}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        urls = write_shards(Path(tmp), args.shards, args.samples, args.frames)
        for w in workers:
            startup, rate = loader_rate(urls, w, args.batch, args.frames, args.batches,
                                        train["shuffle_buffer"])
            loader[w] = rate
            print(f"{'loader: train_loader':<30}{w:>8}{startup:>12.2f}{rate:>12.1f}", flush=True)

    consume = {}
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    for compile_ in modes:
        r = measure(PRESETS[args.preset], args.batch, args.frames, compile_, args.steps, device)
        consume[r["mode"]] = args.batch / (r["step_ms"] / 1e3)
        label = f"model: {args.preset} {r['mode']} step"
        print(f"{label:<30}{'-':>8}{'-':>12}{consume[r['mode']]:>12.1f}", flush=True)

    fastest = max(consume, key=consume.get)
    configured = loader.get(train["workers"])
    best = max(loader, key=loader.get)
    said = (f"configured ({train['workers']} workers) {configured / consume[fastest]:.1f}x, "
            if configured else "")
    print(f"ratio: loader / {args.preset} {fastest} consumption = {said}best ({best} workers) "
          f"{loader[best] / consume[fastest]:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
