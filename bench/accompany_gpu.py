"""``soloist accompany`` end to end on a GPU: ingest, separation, tokenization, generation,
decoding and the WAVs of 4-minute backings, one and several at once.

Random-init weights of the real architectures (same compute as pretrained): htdemucs_6s,
EnCodec 24 kHz and a ``base`` model with 10 s windows; a synthesized demo song as the
input. Prints each run's wall time and where it went, from the run's own log.

    PYTHONPATH=. python3 bench/accompany_gpu.py [--seconds 240] [--tracks 1 8] [--preset base]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from soloist.fetch_weights import fetch_weights
from soloist.io import RANDOM_WARNING, read_json
from soloist.model import PRESETS, Soloist
from soloist.synth import make_song


def model_folder(folder: Path, weights: Path, preset: str) -> None:
    """A random-init model folder of ``preset`` that reads the random codec's tokens."""
    codec = fetch_weights("codec", "encodec_24khz", "random",
                          weights / "random/codec/encodec_24khz.json")
    fetch_weights("demucs", "htdemucs_6s", "random", weights / "random/demucs/htdemucs_6s.json")
    torch.manual_seed(0)
    model = Soloist(replace(PRESETS[preset], max_frames=750))
    model.save_pretrained(folder, {
        "weights": "random", "warning": RANDOM_WARNING, "window_seconds": 10.0,
        "codec": {"model": "encodec_24khz", "files": codec["files"], "sample_rate": 24000,
                  "frame_rate": 75.0, "codebooks": 4, "cardinality": 1024,
                  "weights": "random"},
        "separator": {"model": "htdemucs_6s", "context": ["drums", "bass", "piano", "guitar"],
                      "target": ["other", "vocals"]}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--tracks", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--compile", nargs="+", default=["no", "yes"])
    ap.add_argument("--preset", default="base")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    model_folder(work / "model", work / "weights", args.preset)
    make_song("long", work / "song", seconds=args.seconds, seed=1)
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
          f"torch {torch.__version__}; inputs of {args.seconds:g} s; set up in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    print(f"{'tracks':>6} {'compile':>8} {'wall s':>8} {'x realtime':>11} {'generate s':>11} "
          f"{'gen x realtime':>15}  where the time went (the run's log)", flush=True)
    for n in args.tracks:
        for compile in args.compile:
            out = work / f"out-{n}-{compile}"
            cmd = [sys.executable, "-m", "soloist.cli", "accompany",
                   *[str(work / "song/mixture.flac")] * n, "--model", str(work / "model"),
                   "-o", str(out), "--weights", str(work / "weights"),
                   "--compile" if compile == "yes" else "--no-compile"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                print(f"{n:>6} {compile:>8}  failed ({proc.returncode}): {proc.stderr[-2000:]}",
                      flush=True)
                continue
            summary = read_json(out / "accompany.json")
            spans = next(line for line in (out / "accompany.log").read_text().splitlines()
                         if "accompanied" in line).split(" in ", 1)[1]
            print(f"{n:>6} {compile:>8} {wall:>8.1f} {summary['solo_seconds'] / wall:>11.1f} "
                  f"{summary['generate_seconds']:>11.1f} {summary['realtime']:>15.1f}  {spans}",
                  flush=True)


if __name__ == "__main__":
    main()
