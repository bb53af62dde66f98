"""Generation speed: seconds of solo generated per second, with and without the KV cache.

``Soloist.generate`` on random context codes with a random-init model of the preset
(same compute as a trained one), bf16 autocast on CUDA, top-k sampling as evaluate uses.
Without the cache every step recomputes the whole prefix (the slow reference path).

    PYTHONPATH=. python3 bench/generate_gpu.py [--preset base] [--batch 1 16] [--frames 750]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from dataclasses import replace

import torch

from soloist.model import PRESETS, Soloist

RATE = 75.0  # EnCodec 24 kHz frames per second


def measure(model: Soloist, batch: int, frames: int, use_cache: bool, device: torch.device
            ) -> float:
    """Wall seconds of one generate call of ``frames`` frames for ``batch`` contexts."""
    cfg = model.cfg
    context = torch.randint(0, cfg.card, (batch, cfg.codebooks, frames), device=device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        # warm-up: kernels, cuBLAS handles, allocator pools for this batch size
        model.generate(context[..., :16], 16, top_k=250, seed=0, use_cache=use_cache)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(context, frames, top_k=250, seed=0, use_cache=use_cache)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--frames", type=int, default=750, help="750 = 10 s of solo")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, bf16 autocast: {device.type == 'cuda'}, "
          f"preset {args.preset}, {args.frames} frames = {args.frames / RATE:.1f} s of solo",
          flush=True)
    torch.manual_seed(0)
    cfg = PRESETS[args.preset]
    model = Soloist(replace(cfg, max_frames=max(args.frames, cfg.max_frames))).to(device).eval()
    print(f"{'cache':<7}{'batch':>6}{'frames':>8}{'wall s':>9}{'ms/step':>9}{'solo s/s':>10}")
    rate = {}
    for batch in args.batch:
        for use_cache in (True, False):
            seconds = measure(model, batch, args.frames, use_cache, device)
            rate[batch, use_cache] = batch * args.frames / RATE / seconds
            steps = args.frames + cfg.codebooks - 1
            print(f"{'yes' if use_cache else 'no':<7}{batch:>6}{args.frames:>8}{seconds:>9.2f}"
                  f"{1e3 * seconds / steps:>9.2f}{rate[batch, use_cache]:>10.2f}", flush=True)
    print("ratio: cache / no cache = " + ", ".join(
        f"{rate[b, True] / rate[b, False]:.1f}x at batch {b}" for b in args.batch))


if __name__ == "__main__":
    main()
