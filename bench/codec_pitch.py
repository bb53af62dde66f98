"""Does our own codec keep pitch? Train variants side by side, decode held-out saxophones.

On a GPU machine (``train``): synthesizes ``--songs`` demo songs (every other one with
``variety``; the last ``--held-out`` held out), trains each ``--variant``
(``name:key=value,key=value`` of the ``codec`` section; ``vq=off`` bypasses the quantizer,
an autoencoder's ceiling) for ``--minutes``, all at once on the one GPU, and writes
``OUT/<name>/`` (the model folder) and ``OUT/<name>.npz``: the held-out saxophone stems (10
s from where each solo starts) and their round trips through the first 1, 2, 4 and 8
codebooks, int16 at 24 kHz, and the encoder's latent statistics. Here (``score``): the
share of the frames that the original and a round trip both voice within 50 cents
(``soloist.fit``: CREPE, which the GPU machine lacks), the mel distance, and a table with a
ratio line.

    PYTHONPATH=. python3 bench/codec_pitch.py train --out $OUT --minutes 6.5 \
        --variant spectral: seanet:architecture=seanet
    PYTHONPATH=. .venv/bin/python bench/codec_pitch.py score OUT

``ship`` puts a variant's folder into the package as the codec ``tokenize.model: auto``
takes offline (soloist/codecs/README.md: the command that made it).

On the device tool's machines (no internet, torch only), carry the wheels in ``.whl/``
(``pip download --python-version 3.12 --only-binary=:all:`` of transformers, soundfile,
safetensors, huggingface_hub, pyyaml, tqdm and their dependencies, and auraloss with
``--no-deps``) and ``pip install --no-index --find-links .whl`` them first.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
RATE = 24_000
COUNTS = (1, 2, 4, 8)


def make_songs(folder: Path, count: int) -> list[Path]:
    from concurrent.futures import ProcessPoolExecutor

    from soloist.synth import make_song

    with ProcessPoolExecutor(min(16, count)) as pool:
        list(pool.map(make_song, [f"pitch{i}" for i in range(count)],
                      [folder / f"s{i}" for i in range(count)], [30.0] * count,
                      [7] * count, [44100] * count, [i % 2 == 1 for i in range(count)]))
    return [folder / f"s{i}" for i in range(count)]


def train_variant(spec: str, songs: list[str], held: list[str], minutes: float | None,
                  out: str, device: str, workers: int, fixed: int | None = None) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from codec_gpu import without_mlflow

    without_mlflow()
    from soloist import train_codec as tc
    from soloist.evaluate_codec import mono

    name, _, sets = spec.partition(":")
    changes = dict(s.split("=", 1) for s in sets.split(",") if s)
    bypass = changes.pop("vq", "on") == "off"
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg = config["codec"] | {k: yaml.safe_load(v) for k, v in changes.items()}
    work = Path(out) / f".{name}"
    if bypass:
        import soloist.own_codec

        soloist.own_codec.ResidualVQ = _Bypass
    started = time.perf_counter()
    # steps 50 to 550 give the pace (after the start-up: over steps 50 to 150 the loader's
    # start paced an H100 at a quarter of its speed), then the run resumes to the budget's
    # last step, so that the learning-rate schedule ends where the training does
    for steps in (50, 550, None) if fixed is None else (fixed,):
        if steps == 550:
            paced = time.perf_counter()
        if steps is None:
            pace = (time.perf_counter() - paced) / 500
            steps = max(550, 550 + int((minutes * 60 - (time.perf_counter() - started)) / pace))
        config |= {"codec": cfg | {"device": device, "steps": steps, "workers": workers,
                                   "checkpoint_every": 10**9, "log_every": 10**9},
                   "mlflow": {"experiment": "bench", "tracking_uri": f"sqlite:///{work}/m.db"}}
        tc.train_codec([Path(s) for s in songs], work, config)
    shutil.copytree(work / "own", Path(out) / name, dirs_exist_ok=True)
    model = tc.OwnCodec.from_pretrained(work / "own").to(device).eval()
    if bypass:
        model.quantizer = _Bypass(model.cfg)
    stems, rounds, stats = [], {k: [] for k in COUNTS}, []
    with torch.no_grad():
        for folder in held:
            truth = json.loads((Path(folder) / "truth.json").read_text())
            start = truth["solo_intervals"][0][0]
            x = mono(Path(folder) / "stems/other.flac", RATE, 10.0, start)
            stems.append(x.numpy())
            h = model.encoder(x[None, None].to(device))
            stats.append([float(h.std(dim=2).mean()), float(h.abs().mean())])
            for k in COUNTS:
                y = model.decode(model.encode(x[None, None].to(device), k))[0, :len(x)]
                rounds[k].append(y.float().cpu().numpy())
    np.savez(Path(out) / f"{name}.npz", steps=steps, stats=np.array(stats),
             stems=_int16(stems), **{f"k{k}": _int16(v) for k, v in rounds.items()})
    std, size = np.mean(stats, axis=0)
    print(f"{name}: {steps} steps in {time.perf_counter() - started:.0f} s; latent std over "
          f"time {std:.4f}, |latent| {size:.3f}", flush=True)


class _Bypass:
    """A quantizer that keeps the latents as they are (the autoencoder's ceiling)."""

    def __init__(self, cfg) -> None:
        import torch

        self.cfg = cfg
        self.zero = torch.zeros(())

    def __call__(self, x, n):
        return x, x, self.zero.to(x.device)

    def lookup(self, latents):
        return latents

    def to(self, *args, **kwargs):
        return self

    def parameters(self):
        return iter(())

    def state_dict(self, *args, **kwargs):
        return {}


def _int16(waves: list[np.ndarray]) -> np.ndarray:
    n = min(len(w) for w in waves)
    return np.stack([np.clip(w[:n], -1, 1) * 32767 for w in waves]).astype(np.int16)


def train(args: argparse.Namespace) -> None:
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folders = make_songs(out / ".songs", args.songs)
    songs = [str(f / "mixture.flac") for f in folders[:-args.held_out]]
    held = [str(f) for f in folders[-args.held_out:]]
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"device {name}; {len(songs)} songs to train on, {len(held)} held out", flush=True)
    ctx = multiprocessing.get_context("spawn")
    workers = max(2, 12 // len(args.variant)) if args.device == "cuda" else 0
    procs = [ctx.Process(target=train_variant, args=(v, songs, held, args.minutes, str(out),
                                                     args.device, workers, args.steps))
             for v in args.variant]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


def score(args: argparse.Namespace) -> None:
    import torch

    from soloist import fit
    from soloist.distances import Distances

    distances = Distances(RATE)
    print(f"{'variant':<12}{'steps':>6}{'latent std':>11}" +
          "".join(f"{f'pitch k={k}':>12}" for k in COUNTS) +
          "".join(f"{f'mel k={k}':>9}" for k in COUNTS))
    for path in sorted(Path(args.folder).glob("*.npz")):
        data = np.load(path)
        stems = data["stems"].astype(np.float32) / 32767
        originals = [fit.hear(x, RATE) for x in stems]
        pitch, mel = [], []
        for k in COUNTS:
            rounds = data[f"k{k}"].astype(np.float32) / 32767
            pitch.append(np.mean([fit.pitch_agreement(fit.hear(y, RATE), o)
                                  for y, o in zip(rounds, originals, strict=True)]))
            mel.append(np.mean([distances.scores(torch.from_numpy(y), torch.from_numpy(x))["mel"]
                                for y, x in zip(rounds, stems, strict=True)]))
        print(f"{path.stem:<12}{int(data['steps']):>6}{data['stats'][:, 0].mean():>11.4f}" +
              "".join(f"{p:>12.3f}" for p in pitch) + "".join(f"{m:>9.3f}" for m in mel))
    print("ratio: pitch kept at 8 codebooks (6 kbps) against the target 0.95 "
          "(Opus at 6 kbps: 0.994-0.997, ../shared/notes/music-analysis.md)")


def ship(args: argparse.Namespace) -> None:
    """Copy a trained variant's folder into the package as the shipped codec: its weights in
    float16 (half the size; codes decided in float32 after loading), and its manifest."""
    from safetensors.torch import load_file, save_file

    from soloist.io import read_json, sha256_file, write_json
    from soloist.weights import DEMO_CODEC, SHIPPED

    dest = SHIPPED / DEMO_CODEC
    dest.mkdir(parents=True, exist_ok=True)
    config = read_json(Path(args.folder) / "config.json")
    write_json(dest / "config.json", {**config, "licence": "mit"})  # soloist's own licence
    state = load_file(Path(args.folder) / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
              str(dest / "model.safetensors"), metadata={"format": "pt"})
    files = {f"{DEMO_CODEC}/{f}": sha256_file(dest / f) for f in ("config.json",
                                                                   "model.safetensors")}
    write_json(SHIPPED / f"{DEMO_CODEC}.json", {
        "family": "codec", "name": DEMO_CODEC, "mode": "shipped", "random": False,
        "codebooks": args.codebooks, "files": files})
    size = (dest / "model.safetensors").stat().st_size / 1e6
    print(f"{dest}: {size:.1f} MB, {args.codebooks} codebooks by default")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", default=str(Path.cwd() / "codec-pitch"))
    t.add_argument("--songs", type=int, default=40)
    t.add_argument("--held-out", type=int, default=4)
    t.add_argument("--minutes", type=float, default=7.0)
    t.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps instead of for --minutes")
    t.add_argument("--variant", nargs="+", default=["base:"])
    t.add_argument("--device", default="cuda")
    s = sub.add_parser("score")
    s.add_argument("folder")
    p = sub.add_parser("ship")
    p.add_argument("folder", help="a variant's model folder that train wrote")
    p.add_argument("--codebooks", type=int, default=4, help="the tokens' default")
    args = ap.parse_args()
    {"train": train, "score": score, "ship": ship}[args.verb](args)


if __name__ == "__main__":
    main()
