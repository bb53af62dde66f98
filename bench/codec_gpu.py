"""Our own codec (train_codec) on the demo corpus: how good in a time budget, and how fast.

Synthesizes the demo songs (``--songs`` of ``--seconds``; the last ``--held-out`` are held
out), trains config.yaml's ``codec`` (with ``--set key=value`` overrides) for about
``--minutes`` (a first 40 steps measure the pace, the rest fill the budget), then scores the
held-out songs as ``evaluate_codec`` does: mel distance, multi-resolution STFT distance and
SI-SDR of ours at its full bitrate, of Opus at that bitrate (ffmpeg's libopus, when this
ffmpeg has it; ``--opus-only`` scores just Opus on the same songs, for a machine whose
ffmpeg lacks it) and of the same codec untrained. Training throughput (audio-seconds a
second) and the MFU of one step (FLOPs counted by torch's FlopCounterMode, forward and
backward, against the GPU's bf16 peak) close the table.

    PYTHONPATH=. python3 bench/codec_gpu.py [--minutes 8] [--set channels=16 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml

from soloist.distances import Distances
from soloist.evaluate_codec import mono, opus, roundtrip, untrained_like
from soloist.model import peak_bf16_flops
from soloist.synth import make_song
from soloist.train_codec import codec_config, train_codec
from soloist.weights import load_codec

ROOT = Path(__file__).resolve().parent.parent


def songs(folder: Path, count: int, seconds: float) -> list[Path]:
    files = []
    for i in range(count):
        make_song(f"song{i}", folder / f"song{i}", seconds=seconds, seed=100 + i)
        files.append(folder / f"song{i}" / "mixture.flac")
    return files


def has_libopus() -> bool:
    if not shutil.which("ffmpeg"):
        return False
    encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True,
                              text=True).stdout
    return "libopus" in encoders


def step_flops(cfg: dict, device: torch.device) -> float:
    """FLOPs of one training step's codec forward and backward (the losses left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    from soloist.own_codec import OwnCodec

    model = OwnCodec(codec_config(cfg)).to(device)
    x = torch.randn(cfg["batch_size"], 1, round(cfg["segment_seconds"] * cfg["sample_rate"]),
                    device=device)
    with FlopCounterMode(display=False) as counter:
        y, _, _ = model(x)
        y.float().abs().mean().backward()
    return counter.get_total_flops()


def pace_and_train(config: dict, train: list[Path], out: Path, minutes: float
                   ) -> tuple[float, int, float]:
    """Train for about ``minutes`` in all, resuming: 10 steps that pay the one-time costs,
    then 10 and 20 more (each call pays the same start-up, so their difference is 10 steps'
    pace), then what the budget has left. Returns (seconds a step of the last call, its
    start-up left out; steps; wall seconds of all the calls)."""
    times = []
    for steps in (10, 20, 40):
        config["codec"]["steps"] = steps
        start = time.perf_counter()
        train_codec(train, out, config)
        times.append(time.perf_counter() - start)
    per_step = max(1e-3, (times[2] - times[1]) / 10)
    startup = max(0.0, times[1] - 10 * per_step)
    steps = 40 + max(10, int((minutes * 60 - sum(times) - startup) / per_step))
    config["codec"]["steps"] = steps
    start = time.perf_counter()
    train_codec(train, out, config)
    last = time.perf_counter() - start
    return max(last - startup, last / 2) / (steps - 40), steps, sum(times) + last


def without_mlflow() -> None:
    """A GPU machine without MLflow still times the trainer: its logging calls do nothing
    there (this is a benchmark of speed and quality, not of the tracking)."""
    import importlib.machinery
    import sys
    import types

    try:
        import mlflow  # noqa: F401
    except ImportError:
        stub = types.ModuleType("mlflow")
        # a spec, or transformers' find_spec("mlflow") raises on the stub
        stub.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)
        run = types.SimpleNamespace(info=types.SimpleNamespace(run_id="none"))
        for name in ("set_tracking_uri", "set_experiment", "log_params", "log_dict",
                     "log_metrics", "log_artifact", "log_artifacts", "end_run"):
            setattr(stub, name, lambda *a, **k: None)
        stub.get_experiment_by_name = lambda name: True
        stub.start_run = lambda *a, **k: run
        sys.modules["mlflow"] = stub


def main() -> None:
    without_mlflow()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--songs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--held-out", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="codec settings, key=value (YAML)")
    ap.add_argument("--opus-only", action="store_true")
    args = ap.parse_args()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg = config["codec"] | {k: yaml.safe_load(v) for k, v in
                             (s.split("=", 1) for s in args.set)}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"codec: {json.dumps(cfg)}", flush=True)
    rate, distances = cfg["sample_rate"], Distances(cfg["sample_rate"])
    with tempfile.TemporaryDirectory(prefix="bench-codec-") as tmp:
        tmp = Path(tmp)
        begun = time.perf_counter()
        files = songs(tmp / "songs", args.songs, args.seconds)
        train, held = files[:-args.held_out], files[-args.held_out:]
        tracks = [mono(f, rate, args.seconds) for f in held]
        arch = codec_config(cfg)
        kbps = arch.codebooks * rate / arch.hop_length * math.log2(arch.codebook_size) / 1000
        if args.opus_only:
            score("opus", [opus(x, rate, max(kbps, 6.0)) for x in tracks], tracks, distances)
            return
        config |= {"codec": cfg | {"device": str(device)},
                   "mlflow": {"experiment": "bench", "tracking_uri": f"sqlite:///{tmp}/m.db"}}
        per_step, steps, seconds = pace_and_train(config, train, tmp / "codec", args.minutes)
        print(f"trained {steps} steps ({cfg['batch_size']} x {cfg['segment_seconds']:g} s) in "
              f"{seconds:.0f} s: {per_step * 1000:.1f} ms a step, "
              f"{cfg['batch_size'] * cfg['segment_seconds'] / per_step:.0f} audio-s per s",
              flush=True)
        ours = load_codec(tmp / "codec" / "own.json", device=device)
        untrained = untrained_like(ours)
        untrained.model.to(device)
        print(f"held-out: {len(tracks)} songs x {args.seconds:g} s at {kbps:g} kbps")
        print(f"{'codec':<12}{'mel':>8}{'stft':>8}{'SI-SDR dB':>11}")
        mel = {}
        for label, codec in (("ours", ours), ("untrained", untrained)):
            mel[label] = score(label, [roundtrip(codec, x, arch.codebooks).cpu()
                                       for x in tracks], tracks, distances)
        if has_libopus():
            mel["opus"] = score("opus", [opus(x, rate, max(kbps, 6.0)) for x in tracks],
                                tracks, distances)
        print(f"ratio: ours / untrained mel distance = {mel['ours'] / mel['untrained']:.2f} "
              f"(target <= 0.40 on an H200, <= 0.60 on 2 CPU cores)"
              + (f"; ours / Opus = {mel['ours'] / mel['opus']:.2f} (target < 1)"
                 if "opus" in mel else "; Opus: run with --opus-only where ffmpeg has libopus"))
        peak = peak_bf16_flops(device)
        if peak:
            flops = step_flops(cfg, device)
            print(f"MFU of the encoder/decoder convolutions: {flops / per_step / peak:.1%} "
                  f"({flops / 1e12:.2f} TFLOP a step, bf16 peak {peak / 1e12:.0f} TFLOP/s)")
        left = multiprocessing.active_children()  # an H200 run once hung at exit on these
        print(f"bench done in {time.perf_counter() - begun:.0f} s; processes left running: "
              f"{[p.name for p in left] or 'none'}", flush=True)


def score(label: str, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
          distances: Distances) -> float:
    """Print a codec's mean scores over the tracks; its mel distance."""
    scores = [distances.scores(y, x) for y, x in zip(outputs, inputs, strict=True)]
    mean = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
    print(f"{label:<12}{mean['mel']:>8.3f}{mean['stft']:>8.3f}{mean['si_sdr']:>11.2f}",
          flush=True)
    return mean["mel"]


if __name__ == "__main__":
    main()
