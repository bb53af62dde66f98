"""Generation speed: seconds of solo per second, against the bound of reading the weights.

A random-init model of the preset (same compute as a trained one), its weights in bf16 on a
GPU, top-k 250 sampling as accompany uses, windows of ``--frames`` frames. Variants:

- ``reference``: no cache, every step decodes the whole prefix again (the slow path kept as
  the definition of correct);
- ``static``: the static KV cache, steps launched from Python;
- ``graph``: the same step replayed as one CUDA graph;
- ``compiled``: the step fused by ``torch.compile`` first, then replayed as a CUDA graph.

The bound row is bytes a step must read (decoder weights, heads, both KV caches) over the
HBM bandwidth a device-to-device copy reaches in this run. Also measured: time to the first
second of solo (a fresh decoder: capture included), bf16 against fp32 (teacher-forced top-1
agreement) and greedy codes of the graph path against the reference.

    PYTHONPATH=. python3 bench/generate_gpu.py [--preset base] [--batch 1 64] [--frames 750]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from soloist.generate import Decoder, Sampling, generate
from soloist.model import PRESETS, Soloist

RATE = 75.0  # EnCodec 24 kHz frames per second
SAMPLING = Sampling(top_k=250)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + written)."""
    if device.type != "cuda":
        return float("nan")
    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    start, n = time.perf_counter(), 10
    for _ in range(n):
        y.copy_(x)
    sync()
    return 2 * x.numel() * n / (time.perf_counter() - start)


def step_bytes(model: Soloist, decoder: Decoder) -> int:
    """What one decode step must read: decoder weights and heads (bf16), both caches."""
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                  if n.startswith(("decoder.", "heads.", "decoder_norm.")))
    def size(kvs: list) -> int:
        return sum(t.numel() * t.element_size() for kv in kvs for t in kv)

    # self-attention needs on average half its steps; cross-attention all of the window
    return weights + size(decoder.cache.self_kv) // 2 + size(decoder.cache.cross_kv)


def windows(model: Soloist, batch: int, frames: int, variant: str, device: torch.device,
            n: int = 2) -> tuple[float, float, Decoder]:
    """Seconds of the first window of ``frames`` frames (capture and compile included) and
    per window after it (best of n)."""
    cfg = model.cfg
    decoder = Decoder(model, batch, frames, frames, SAMPLING, graph=variant != "static",
                      compile=variant == "compiled")
    context = torch.randint(0, cfg.card, (batch, cfg.codebooks, frames), device=device)
    mask = torch.ones(batch, frames, dtype=torch.bool, device=device)
    noise = torch.rand(batch, cfg.codebooks, decoder.cache.steps, device=device)
    times = []
    for _ in range(n + 1):
        sync()
        start = time.perf_counter()
        decoder.window(context, mask, [frames] * batch, None, noise)
        sync()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:]), decoder


def first_second(model: Soloist, device: torch.device) -> float:
    """Seconds from the backing's codes to the first second of solo, a new decoder's capture
    included (what ``soloist accompany`` waits before its first window can end)."""
    cfg, W = model.cfg, model.cfg.max_frames
    context = torch.randint(0, cfg.card, (1, cfg.codebooks, W), device=device)
    mask = torch.ones(1, W, dtype=torch.bool, device=device)
    sync()
    start = time.perf_counter()
    decoder = Decoder(model, 1, W, W, SAMPLING)
    noise = torch.rand(1, cfg.codebooks, decoder.cache.steps, device=device)
    decoder.window(context, mask, [round(RATE)], None, noise)
    sync()
    return time.perf_counter() - start


@torch.no_grad()
def agreement(model32: Soloist, model16: Soloist, frames: int, device: torch.device) -> str:
    """bf16 against fp32: top-1 agreement of teacher-forced logits on random codes, and the
    fraction of identical greedy codes of the graph path and the reference (fp32)."""
    cfg = model32.cfg
    g = torch.Generator(device=device).manual_seed(0)
    context = torch.randint(0, cfg.card, (4, cfg.codebooks, frames), device=device, generator=g)
    target = torch.randint(0, cfg.card, (4, cfg.codebooks, frames), device=device, generator=g)
    logits32 = model32(context, target)[2].float()
    logits16 = model16(context, target)[2].float()
    top1 = (logits32.argmax(-1) == logits16.argmax(-1)).float().mean().item()
    rel = ((logits16 - logits32).norm() / logits32.norm()).item()
    short = context[:1, :, :60]
    greedy = Sampling(temperature=0)
    fast = generate(model32, short, sampling=greedy)
    slow = generate(model32, short, sampling=greedy, use_cache=False)
    same = (fast == slow).float().mean().item()
    return (f"bf16 vs fp32 teacher-forced: top-1 agreement {100 * top1:.2f}%, relative error "
            f"{rel:.2e}; fp32 greedy graph vs reference (60 frames): {100 * same:.1f}% "
            "identical codes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--frames", type=int, default=750, help="750 = a window of 10 s")
    ap.add_argument("--variants", nargs="+", default=["static", "graph", "compiled"])
    ap.add_argument("--reference-frames", type=int, default=150)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    bandwidth = copy_bandwidth(device)
    print(f"device: {name}, torch {torch.__version__}, preset {args.preset}, windows of "
          f"{args.frames} frames ({args.frames / RATE:.0f} s), top-k 250, copy bandwidth "
          f"{bandwidth / 1e12:.2f} TB/s", flush=True)
    torch.manual_seed(0)
    cfg = replace(PRESETS[args.preset], max_frames=args.frames)
    model32 = Soloist(cfg).to(device).eval()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Soloist(cfg).to(device).eval()
    model.load_state_dict(model32.state_dict())
    model = model.to(dtype)
    steps = args.frames + cfg.codebooks - 1
    print(f"{'variant':<11}{'batch':>6}{'window s':>10}{'ms/step':>9}"
          f"{'solo s/s (x realtime)':>23}{'first window s':>16}", flush=True)
    rows = {}

    def row(variant: str, batch: int, seconds: float, frames: int, first: str = "") -> None:
        n = frames + cfg.codebooks - 1
        rate = batch * frames / RATE / seconds
        rows[variant, batch] = 1e3 * seconds / n
        print(f"{variant:<11}{batch:>6}{seconds:>10.3f}{1e3 * seconds / n:>9.3f}{rate:>23.1f}"
              f"{first:>16}", flush=True)

    # reference: every step decodes its whole prefix, at batch 1 over a shorter window
    context = torch.randint(0, cfg.card, (1, cfg.codebooks,
                                          min(args.reference_frames, args.frames)), device=device)
    generate(model, context[..., :8], sampling=SAMPLING, use_cache=False)
    sync()
    start = time.perf_counter()
    generate(model, context, sampling=SAMPLING, use_cache=False)
    sync()
    row("reference", 1, time.perf_counter() - start, context.shape[-1])
    decoders = {}
    for batch in args.batch:
        for variant in args.variants:
            try:
                first, seconds, decoders[batch] = windows(model, batch, args.frames, variant,
                                                          device)
            except Exception as e:  # one failed variant must not cost the others
                print(f"{variant:<11}{batch:>6}  failed: {type(e).__name__}: {e}", flush=True)
                continue
            row(variant, batch, seconds, args.frames, f"{first:.2f}")
    for batch, decoder in decoders.items():
        seconds = step_bytes(model, decoder) / bandwidth
        print(f"{'bound':<11}{batch:>6}{seconds * steps:>10.3f}{1e3 * seconds:>9.3f}"
              f"{batch / RATE / seconds:>23.1f}   ({step_bytes(model, decoder) / 1e6:.0f} MB "
              "a step)", flush=True)
        best = min((v for (name, b), v in rows.items() if b == batch and name != "reference"),
                   default=float("nan"))
        print(f"ratio at batch {batch}: best {best:.3f} ms/step = {best / 1e3 / seconds:.1f}x "
              f"the bound, {batch / RATE / (best / 1e3):.1f}x realtime", flush=True)
    print(f"time to the first second of solo (batch 1, new decoder, capture included): "
          f"{first_second(model, device):.3f} s", flush=True)
    print(agreement(model32, model, args.frames, device), flush=True)


if __name__ == "__main__":
    main()
