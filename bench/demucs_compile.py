"""The Demucs forward alone, eager vs ``torch.compile`` modes (what ``separate.compile`` buys).

Random-init htdemucs_6s, one batch of full segments, as ``separate`` runs them: on a GPU in
bf16 autocast, on a CPU in fp32. Prints one row per variant: ms per batch, x realtime, the
compile time and the largest difference from eager relative to its peak.

    python bench/demucs_compile.py --batch 16 --modes default reduce-overhead 2>/dev/null
    python bench/demucs_compile.py --batch 1 --modes default --runs 3   (CPU)
"""

from __future__ import annotations

import argparse
import time

import torch
from demucs.htdemucs import HTDemucs

from soloist.fetch_weights import DEMUCS_ARCH


def timed(fn, x: torch.Tensor, runs: int) -> tuple[float, torch.Tensor]:
    """Seconds per call of ``fn(x)`` after 3 warm-up calls, and its output."""
    with torch.inference_mode(), autocast(x.device):
        for _ in range(3):
            y = fn(x)
        sync(x.device)
        start = time.perf_counter()
        for _ in range(runs):
            y = fn(x)
        sync(x.device)
    return (time.perf_counter() - start) / runs, y.float()


def autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--modes", nargs="+", default=["default", "reduce-overhead"])
    parser.add_argument("--runs", type=int, default=10, help="timed calls per variant")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = HTDemucs(**DEMUCS_ARCH["htdemucs_6s"][1]).to(device).eval()
    seg = int(model.samplerate * float(model.segment))
    x = torch.randn(args.batch, 2, seg, device=device)
    audio_s = args.batch * seg / model.samplerate

    eager_s, reference = timed(model, x, args.runs)
    rows = [(f"eager {'bf16' if device.type == 'cuda' else 'fp32'}", eager_s, 0.0, 0.0)]
    for mode in args.modes:
        start = time.perf_counter()
        compiled = torch.compile(model, mode=mode, dynamic=False)
        with torch.inference_mode(), autocast(device):
            compiled(x)
        compile_s = time.perf_counter() - start
        seconds, y = timed(compiled, x, args.runs)
        error = float((y - reference).abs().max() / reference.abs().max())
        rows.append((f"compile {mode}", seconds, compile_s, error))

    print(f"htdemucs_6s (random init), batch {args.batch} x {seg / model.samplerate:.2f} s, "
          f"torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"{'variant':26} {'ms/batch':>9} {'x realtime':>11} {'compile s':>10} "
          f"{'max rel diff':>13}")
    for name, seconds, compile_s, error in rows:
        print(f"{name:26} {seconds * 1e3:9.1f} {audio_s / seconds:11.0f} {compile_s:10.0f} "
              f"{error:13.1e}")
    print(f"ratio: best compiled / eager = {eager_s / min(r[1] for r in rows):.2f}x")


if __name__ == "__main__":
    main()
