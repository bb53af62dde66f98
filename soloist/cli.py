"""The ``soloist`` command: ``soloist accompany BACKING... --model MODEL -o OUT_DIR`` and
``soloist continue RECORDING... --model MODEL -o OUT_DIR --seconds N``."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from soloist.config import TRACK_ID, source_kind, validate_config
from soloist.synth import make_song


def _names(sources: list[str]) -> list[str]:
    """An output folder name for each source: its file, folder or demo name, made unique."""
    names: list[str] = []
    for source in sources:
        stem = source.removeprefix("demo:").rstrip("/")
        stem = re.sub(r"\?.*$", "", stem).rsplit("/", 1)[-1]
        stem = Path(stem).stem if source_kind(source) == "file" else stem
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "backing"
        unique, n = name, 1
        while unique in names:
            n += 1
            unique = f"{name}-{n}"
        names.append(unique)
    return names


def _weights(info: dict, root: Path, seed: int, separate: bool) -> dict[str, Path]:
    """Manifests of the model's separator and codec under ``root``, fetched where missing
    (downloaded, or rebuilt from ``seed`` when the model was trained on random weights)."""
    from soloist.fetch_weights import fetch_weights, weights_mode
    from soloist.weights import WeightsError, codec_manifest

    wanted = {"codec": info["codec"]["model"]}
    if separate and info["separator"]:  # a continuation model has none
        wanted["demucs"] = info["separator"]["model"]
    manifests = {}
    if (ours := codec_manifest(wanted["codec"])) is not None:
        if not ours.is_file():  # train_codec's lives in the workflow folder that trained it
            raise WeightsError("the model reads tokens of soloist's own codec: run soloist "
                               "accompany in the workflow folder whose train_codec made it "
                               f"({ours})")
        manifests["codec"] = ours
        del wanted["codec"]
    mode = info["weights"]
    if "demucs" in wanted and mode not in ("pretrained", "random"):  # a codec of ours
        mode = weights_mode("auto", {"demucs": wanted["demucs"]}, root, demo_only=True)[0]
    for family, name in wanted.items():
        manifest = root / mode / family / f"{name}.json"
        if not manifest.is_file():
            fetch_weights(family, name, mode, manifest, seed)
        manifests[family] = manifest
    return manifests


class InputError(ValueError):
    """An input the command line cannot take; the message says why."""


def _inputs(sources: list[str], config: dict, demos: Path) -> list[tuple[str, str, str]]:
    """(name, kind, source) of each input, a demo song synthesized into ``demos`` first (as
    the demo_corpus rule would)."""
    inputs = []
    for name, source in zip(_names(sources), sources, strict=True):
        kind = source_kind(source)
        if kind == "demo":
            demo = source.removeprefix("demo:")
            if not TRACK_ID.fullmatch(demo):
                raise InputError(f"{source}: a demo name is letters, digits, '.', '_' and '-'")
            make_song(demo, demos / demo, config["demo"]["seconds"], config["seed"])
            source = str(demos / demo / "mixture.flac")
        inputs.append((name, kind, source))
    return inputs


def _log_to(path: Path) -> None:
    """The stages' own log lines go to a file; the terminal gets one line per failed input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, filename=path, filemode="w",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def continue_main(args: argparse.Namespace) -> int:
    from soloist.accompany import load_model
    from soloist.continuation import continue_recordings
    from soloist.generate import Sampling
    from soloist.model import ModelFolderError
    from soloist.weights import WeightsError

    out = Path(args.out)
    _log_to(out / "continue.log")
    config = validate_config({})
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    try:
        model = load_model(args.model, args.device)
        weights = _weights(model.info, Path(args.weights), config["seed"], separate=False)
        with tempfile.TemporaryDirectory(prefix="soloist-demo-") as demos:
            inputs = _inputs(args.recording, config, Path(demos))
            result = continue_recordings(inputs, model, out, config, weights["codec"],
                                         args.seconds, sampling, args.seed, dict(args.tag),
                                         dict(args.tag_cfg))
    except (InputError, ModelFolderError, WeightsError, ValueError) as e:
        print(f"soloist continue: {e}", file=sys.stderr)
        return 1
    for t in result["tracks"]:
        if not t["ok"]:
            print(f"soloist continue: {t['name']} ({t['source']}): {t['reason']}",
                  file=sys.stderr)
    ok = [t for t in result["tracks"] if t["ok"]]
    print(f"{len(ok)} of {len(result['tracks'])} recordings extended by {args.seconds:g} s: "
          f"{out}/<name>/extended.wav")
    if "warning" in result:
        print(result["warning"], file=sys.stderr)
    return 0 if ok else 1


def accompany_main(args: argparse.Namespace) -> int:
    from soloist.accompany import AccompanyError, Backing, accompany, load_model
    from soloist.generate import Sampling
    from soloist.model import ModelFolderError
    from soloist.weights import WeightsError

    out = Path(args.out)
    _log_to(out / "accompany.log")
    config = validate_config({})
    try:
        model = load_model(args.model, args.device)
        weights = _weights(model.info, Path(args.weights), config["seed"], args.separate)
    except (ModelFolderError, WeightsError) as e:
        print(f"soloist accompany: {e}", file=sys.stderr)
        return 1
    names = _names(args.backing)
    with tempfile.TemporaryDirectory(prefix="soloist-demo-") as demos:
        try:
            inputs = [Backing(*i, tags=dict(args.tag)) for i in
                      _inputs(args.backing, config, Path(demos))]
        except InputError as e:
            print(f"soloist accompany: {e}", file=sys.stderr)
            return 2
        sampling = Sampling(args.temperature, args.top_k, args.top_p, args.cfg_scale)
        try:
            result = accompany(inputs, model, out, config, weights, sampling, args.seed,
                               args.overlap, args.seconds, args.separate, args.batch_size,
                               args.compile, name=str(args.model), tag_cfg=dict(args.tag_cfg))
        except (AccompanyError, WeightsError) as e:
            print(f"soloist accompany: {e}", file=sys.stderr)
            return 1
    given = dict(zip(names, args.backing, strict=True))
    for t in result["tracks"]:
        if not t["ok"]:
            print(f"soloist accompany: {t['name']} ({given.get(t['name'], t['source'])}): "
                  f"{t['reason']}", file=sys.stderr)
    ok = [t for t in result["tracks"] if t["ok"]]
    print(f"{len(ok)} of {len(result['tracks'])} inputs played along with: {out / 'index.html'}")
    if "warning" in result:
        print(result["warning"], file=sys.stderr)
    return 0 if ok else 1


def _pair(kind: type) -> Callable[[str], tuple[str, Any]]:
    """argparse type of COLUMN=VALUE, its value read as ``kind``."""
    def parse(text: str) -> tuple[str, Any]:
        column, sep, value = text.partition("=")
        if not sep or not column:
            raise argparse.ArgumentTypeError(f"{text!r} is not COLUMN=VALUE")
        try:
            return column, kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a "
                                             f"{kind.__name__}") from None
    return parse


def _batch_size(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _sampling_args(p: argparse.ArgumentParser, defaults: dict) -> None:
    """What both commands take to sample and where to run."""
    p.add_argument("--seed", type=int, default=defaults["seed"])
    p.add_argument("--temperature", type=float, default=defaults["temperature"])
    p.add_argument("--top-k", type=int, default=defaults["top_k"])
    p.add_argument("--top-p", type=float, default=defaults["top_p"])
    p.add_argument("--device", default=defaults["device"], help="auto, cpu, cuda or cuda:N")


def _tag_args(p: argparse.ArgumentParser) -> None:
    """What both commands take for a model conditioned on tags (condition.columns)."""
    p.add_argument("--tag", type=_pair(str), action="append", default=[],
                   metavar="COLUMN=VALUE",
                   help="a tag for a model conditioned on tags, e.g. --tag tempo=120 --tag "
                        "key=D; repeat for more columns")
    p.add_argument("--tag-cfg", type=_pair(float), action="append", default=[],
                   metavar="COLUMN=SCALE",
                   help="guidance per tag column: > 1 follows that tag more closely, at one "
                        "more pass of compute each (default: 1, none)")


def parser() -> argparse.ArgumentParser:
    defaults = validate_config({})["accompany"]
    ap = argparse.ArgumentParser(prog="soloist", description="soloist: a model that plays along")
    commands = ap.add_subparsers(dest="command", required=True)
    a = commands.add_parser(
        "accompany", help="play a solo over backing tracks",
        description="Generate a solo over the whole of each backing track and write "
                    "OUT_DIR/<name>/{solo,mix,backing}.wav and OUT_DIR/index.html.")
    a.add_argument("backing", nargs="+", metavar="BACKING",
                   help="an audio file ffmpeg reads, a URL yt-dlp takes, a folder of stems, "
                        "or demo:<name>")
    a.add_argument("--model", "-m", default="results/train",
                   help="a model folder (results/train, results/publish) or a Hugging Face "
                        "Hub repo id (default: %(default)s)")
    a.add_argument("-o", "--out", default="accompany", metavar="OUT_DIR",
                   help="where the WAVs and the listening page go (default: %(default)s)")
    a.add_argument("--seconds", type=float, default=defaults["seconds"],
                   help="only the first seconds of each backing (default: all of it)")
    _sampling_args(a, defaults)
    a.add_argument("--cfg-scale", type=float, default=defaults["cfg_scale"],
                   help="classifier-free guidance: > 1 follows the backing more closely, at "
                        "twice the compute (default: %(default)s)")
    _tag_args(a)
    a.add_argument("--overlap", type=float, default=defaults["overlap"],
                   help="seconds each generation window shares with the one before "
                        "(default: %(default)s)")
    a.add_argument("--separate", action=argparse.BooleanOptionalAction,
                   default=defaults["separate"],
                   help="take the separator's backing roles of each input (default); "
                        "--no-separate: the input already is a backing track")
    a.add_argument("--batch-size", type=_batch_size, default=defaults["batch_size"],
                   help="backings generated side by side (default: %(default)s)")
    a.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   default=defaults["compile"],
                   help="fuse the decode step with torch.compile first (default: on a GPU, "
                        "when the solos are long enough to repay it)")
    a.add_argument("--weights", default="resources/weights",
                   help="folder of the separator's and codec's weights, fetched when missing "
                        "(default: %(default)s)")
    a.set_defaults(run=accompany_main)
    c = commands.add_parser(
        "continue", help="extend recordings by N seconds (a model of task continuation)",
        description="Generate what comes after each recording and write "
                    "OUT_DIR/<name>/{continuation,extended}.wav. A model of latents "
                    "(task.output: latents) predicts rather than samples: the sampling "
                    "options do not change what it writes.")
    c.add_argument("recording", nargs="+", metavar="RECORDING",
                   help="an audio file ffmpeg reads, a URL yt-dlp takes, a folder of stems, "
                        "or demo:<name>")
    c.add_argument("--model", "-m", default="results/train",
                   help="a model folder or Hugging Face Hub repo id (default: %(default)s)")
    c.add_argument("-o", "--out", default="continue", metavar="OUT_DIR")
    c.add_argument("--seconds", type=float, default=16.0,
                   help="how much to add to each recording (default: %(default)s)")
    _sampling_args(c, defaults)
    _tag_args(c)
    c.add_argument("--weights", default="resources/weights",
                   help="folder of the codec's weights, fetched when missing "
                        "(default: %(default)s)")
    c.set_defaults(run=continue_main)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
