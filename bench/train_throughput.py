"""Training throughput of the model presets: step time, tokens/s and MFU (bf16 on CUDA).

Synthetic batches of the real shapes (K codebooks x frames, no padding, as the trainer feeds
full windows), AdamW, the trainer's forward/backward/step; eager and torch.compile. MFU uses
the model's own FLOP count against the GPU's dense bf16 peak. ``--profile`` ends with the
GPU kernels that took the most time in the last variant.

    .venv/bin/python bench/train_throughput.py --preset base --batch 16 --frames 750
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from dataclasses import replace

import torch

from soloist.model import PRESETS, ModelConfig, Soloist, peak_bf16_flops


def measure(cfg: ModelConfig, batch: int, frames: int, compile_: bool, steps: int,
            device: torch.device, profile: bool = False, model_cls: type = Soloist) -> dict:
    torch.manual_seed(0)
    cfg = replace(cfg, max_frames=max(frames, cfg.max_frames))
    model = model_cls(cfg).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95))
    step_model = torch.compile(model) if compile_ else model
    context = torch.randint(0, cfg.card, (batch, cfg.codebooks, frames), device=device)
    target = torch.randint(0, cfg.card, (batch, cfg.codebooks, frames), device=device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step() -> None:
        with autocast:
            loss, _, _ = step_model(context, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3 if not compile_ else 5):  # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - start) / steps
    tokens = batch * frames / dt
    peak = peak_bf16_flops(device)
    mfu = model.flops_per_token(frames) * tokens / peak if peak else None
    table = None
    if profile:
        activity = torch.profiler.ProfilerActivity
        with torch.profiler.profile(activities=[activity.CPU, activity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25,
                                          max_name_column_width=60)
    return {"mode": "compiled" if compile_ else "eager", "batch": batch, "frames": frames,
            "params_M": model.num_params() / 1e6, "step_ms": dt * 1e3, "tokens_per_s": tokens,
            "mfu": mfu, "profile": table}


HEADER = (f"{'variant':<24}{'mode':<10}{'batch':>6}{'frames':>7}{'params':>9}{'step ms':>10}"
          f"{'tokens/s':>12}{'MFU':>7}")


def row(name: str, r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
    return (f"{name:<24}{r['mode']:<10}{r['batch']:>6}{r['frames']:>7}{r['params_M']:>8.1f}M"
            f"{r['step_ms']:>10.1f}{r['tokens_per_s']:>12.0f}{mfu:>7}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=["tiny", "base"])
    ap.add_argument("--batch", type=int, nargs="+", default=[16])
    ap.add_argument("--frames", type=int, default=750)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", choices=["no", "yes", "both"], default="both")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, bf16 autocast: {device.type == 'cuda'}")
    print(HEADER)
    r = {}
    for preset in args.preset:
        for batch in args.batch:
            for compile_ in modes:
                r = measure(PRESETS[preset], batch, args.frames, compile_, args.steps, device,
                            profile=args.profile and device.type == "cuda")
                print(row(preset, r), flush=True)
    if r.get("profile"):
        print(r["profile"])


if __name__ == "__main__":
    main()
