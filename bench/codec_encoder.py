"""A codec's encoder alone on a batch of tokenize's chunks: where its time goes, and what
fusing its elementwise work (torch.compile) wins, against the bytes its convolutions must move.

For each codec (``--codecs``; random-init weights in the Hub's layout), a batch [B, 1, N] of
``--seconds`` chunks goes through the encoder in fp32 and under bf16 autocast: eager (what
tokenize runs today), with only DAC's Snake activations compiled (one fused kernel each
instead of five), and with the whole encoder compiled (``dynamic=False``: tokenize's chunks
have one shape); "nhwc": each convolution as a conv2d in channels-last memory; "frozen":
the weights frozen into the compiled graph ("compiled nhwc" is what ``tokenize.compile``
runs). The first call's seconds (compilation) and the steady time per batch are
both shown; codes (the quantizer in fp32) are compared with eager fp32's. The bound: every
convolution reads its input and writes its output once, at the GPU's measured copy
bandwidth. A kernel profile of the first row (of every row: ``--profile-all``) says which
kernels take the time.

    PYTHONPATH=. python3 bench/codec_encoder.py [--codecs dac_44khz encodec_32khz]
                                                [--batch 64] [--seconds 11]
                                                [--variants eager "compiled nhwc frozen" ...]
"""

from __future__ import annotations

import argparse
import collections
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from soloist.codec import channels_last_convs
from soloist.device import autocast
from soloist.fetch_weights import fetch_weights
from soloist.weights import load_codec


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[float, float, torch.Tensor]:
    """Seconds of the first call, the best of ``repeat`` more, and the last output."""
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return first, best, out


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """DAC's Snake activation, x + sin(alpha x)^2 / alpha, as one expression to fuse."""
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


def fuse_snakes(model: torch.nn.Module) -> int:
    """Point every Snake1d of ``model`` at one compiled ``snake``; how many there were."""
    fused = torch.compile(snake, dynamic=True)
    count = 0
    for m in model.modules():
        if type(m).__name__ == "Snake1d":
            m.forward = lambda x, m=m: fused(x, m.alpha)
            count += 1
    return count


def conv_bytes(encoder: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes the encoder's convolutions read and write, each tensor once."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        for t in (inputs[0], output):
            total += t.numel() * t.element_size()

    hooks = [m.register_forward_hook(count) for m in encoder.modules()
             if isinstance(m, torch.nn.Conv1d)]
    with torch.inference_mode():
        encoder(x)
    for h in hooks:
        h.remove()
    return total


def copy_bandwidth() -> float:
    """Bytes a second of a large device-to-device copy (read + write)."""
    x = torch.empty(2**28, device="cuda")
    y = torch.empty_like(x)
    _, best, _ = timed(lambda: y.copy_(x), 5)
    return 2 * x.numel() * x.element_size() / best


def top_kernels(run: Callable[[], torch.Tensor], label: str, rows: int = 8) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        sync()
    times: collections.Counter = collections.Counter()
    for e in prof.events():
        if e.device_type.name == "CUDA":
            times[e.name[:70]] += e.device_time
    total = sum(times.values())
    print(f"  {label} profile: {total / 1e3:.1f} ms of kernels")
    for name, t in times.most_common(rows):
        print(f"    {100 * t / total:5.1f}%  {name}")


def bench(codec_name: str, args: argparse.Namespace, tmp: Path) -> None:
    manifest = tmp / f"{codec_name}.json"
    fetch_weights("codec", codec_name, "random", manifest)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(args.batch, 1, round(args.seconds * load_codec(manifest).sample_rate),
                    device=device) * 0.1
    audio_s = x.numel() / load_codec(manifest).sample_rate
    print(f"\n{codec_name}: batch {list(x.shape)} = {audio_s:.0f} audio-s")
    reference = None
    rows = []
    for variant in args.variants:
        codec = load_codec(manifest, device=device)
        encoder = codec.model.encoder
        if variant == "fused snake" and not fuse_snakes(encoder):
            continue
        if "nhwc" in variant:
            channels_last_convs(encoder)
        torch._inductor.config.freezing = "frozen" in variant
        if variant.startswith("compiled"):
            mode = "max-autotune-no-cudagraphs" if "autotune" in variant else None
            encoder.compile(dynamic=False, mode=mode)
        for precision in args.precision:
            def run(enc=encoder, p=precision):
                with torch.inference_mode(), autocast(p, x.device):
                    return enc(x)
            first, best, out = timed(run, args.repeat)
            with torch.inference_mode():
                codes = codec.quantize(out.float())
            if reference is None:
                reference = codes
            if device == "cuda" and (len(rows) == 0 or args.profile_all):
                top_kernels(run, f"{variant} {precision}", 8 if len(rows) == 0 else 5)
            same = 100 * (codes == reference).float().mean().item()
            rows.append((f"{variant} {precision}", first, best, same))
        torch._dynamo.reset()
    eager = rows[0][2]
    print(f"  {'encoder':<22}{'first s':>9}{'ms':>9}{'x realtime':>12}{'vs eager':>10}"
          f"{'codes same':>12}")
    for label, first, best, same in rows:
        print(f"  {label:<22}{first:>9.2f}{best * 1e3:>9.1f}{audio_s / best:>12.0f}"
              f"{eager / best:>9.2f}x{same:>11.2f}%")
    if device == "cuda":
        moved = conv_bytes(load_codec(manifest, device=device).model.encoder, x)
        bound = moved / copy_bandwidth()
        print(f"  {'bound: convs r+w once':<22}{'-':>9}{bound * 1e3:>9.1f}"
              f"{audio_s / bound:>12.0f}{eager / bound:>9.2f}x{'-':>12}")
        print(f"ratio {codec_name}: best / eager fp32 = "
              f"{eager / min(r[2] for r in rows):.2f}x; bound / eager = {eager / bound:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs", nargs="+", default=["dac_44khz", "encodec_32khz"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=11.0, help="a chunk with its warm-ups")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["eager", "fused snake", "compiled"],
                    choices=["eager", "fused snake", "compiled", "eager nhwc", "compiled nhwc",
                             "compiled frozen", "compiled nhwc frozen", "compiled autotune",
                             "compiled nhwc autotune"],
                    help="the first is the reference the others' codes and times are compared to")
    ap.add_argument("--profile-all", action="store_true",
                    help="a kernel profile of every row, not only the first")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = ap.parse_args()
    logging.getLogger("soloist").setLevel(logging.ERROR)  # the header says random-init once
    torch._logging.set_logs(dynamo=logging.ERROR)  # EnCodec's graph breaks, once per layer
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {name}, torch {torch.__version__}, weights: random-init")
    with tempfile.TemporaryDirectory(prefix="bench-encoder-") as tmp:
        for codec_name in args.codecs:
            bench(codec_name, args, Path(tmp))


if __name__ == "__main__":
    main()
