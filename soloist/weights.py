"""Loading the models soloist runs (Demucs, the codecs) from the folders ``fetch_weights`` fills.

Layouts (what the real loaders read):
- Demucs: the HuggingFace layout, ``<name>.yaml`` (the bag: model signatures) beside one
  ``<sig>.safetensors`` per model, class and init arguments in the safetensors metadata.
  We load it with demucs' own safetensors loader after checking the class against an
  allowlist, so no pickle is ever read.
- Codecs (EnCodec 24 and 32 kHz, DAC 44.1 kHz): the Hugging Face layout, a folder
  ``<name>/`` holding ``config.json`` and ``model.safetensors``, which transformers'
  ``from_pretrained`` reads (safetensors only). Our own codec (``train_codec``'s
  ``results/train_codec/own/``) has the same two files.

Each model has a manifest ``resources/weights/<mode>/<family>/<name>.json`` with the sha256
of its files; loaders verify them, and say so when the weights are random-init.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from soloist.io import RANDOM_WARNING, read_json, sha256_file

if TYPE_CHECKING:  # torch loads with the first model, not with the config check
    import torch

    from soloist.codec import Codec

log = logging.getLogger("soloist.weights")

DEMUCS_ALLOWED = {"demucs.htdemucs.HTDemucs", "demucs.hdemucs.HDemucs", "demucs.demucs.Demucs"}
HF_FILES = ("config.json", "model.safetensors")  # a Hugging Face model folder


@dataclass(frozen=True)
class CodecSpec:
    """A codec soloist tokenizes with: where its pretrained weights are and what they are."""

    repo: str  # Hugging Face repo of the pretrained weights
    family: str  # encodec | dac: the transformers class
    config: dict  # the published config.json's architecture, for random-init weights
    codebooks: int  # K by default ...
    max_codebooks: int  # ... and at most
    licence: str  # of the pretrained weights, as the Hub names it
    # GPU memory per batch row and input sample at its rate (batch_size: auto): the encoder's
    # fp32 peak measured on an H200 (640, 1280, 1285 bytes; BENCHMARKS.md), plus 22%
    peak_bytes: int

    @property
    def sample_rate(self) -> int:  # known before the model loads
        return self.config["sampling_rate"]


CODECS = {
    "encodec_24khz": CodecSpec("facebook/encodec_24khz", "encodec", {"sampling_rate": 24_000},
                               4, 32, "cc-by-nc-4.0", 780),
    # MusicGen's; transformers' conversion script sets these, the rest are EncodecConfig's
    "encodec_32khz": CodecSpec("facebook/encodec_32khz", "encodec", {
        "sampling_rate": 32_000, "upsampling_ratios": [8, 5, 4, 4], "target_bandwidths": [2.2],
        "num_filters": 64, "codebook_size": 2048, "use_causal_conv": False, "normalize": False,
        "use_conv_shortcut": False}, 4, 4, "cc-by-nc-4.0", 1560),
    "dac_44khz": CodecSpec("descript/dac_44khz", "dac", {"sampling_rate": 44_100}, 9, 9, "mit",
                           1570),
}


# Our own codec (soloist.own_codec), trained on demo songs and shipped in the package (its
# command: soloist/codecs/README.md): what tokenize.model: auto takes where the weights are
# random-init, since a random codec's decoder turns any codes into a hum
DEMO_CODEC = "own_demo"
SHIPPED = Path(__file__).parent / "codecs"


def resolve_codec(name: str, weights: str) -> str:
    """``tokenize.model`` with ``auto`` decided for ``weights`` (pretrained | random):
    EnCodec 24 kHz where its pretrained weights are used, else the shipped demo codec."""
    if name != "auto":
        return name
    return DEMO_CODEC if weights == "random" else "encodec_24khz"


def is_own(name: str) -> bool:
    """Whether codec ``name`` is one of ours (train_codec's ``own`` or the shipped one)."""
    return name in ("own", DEMO_CODEC)


def codec_manifest(name: str) -> Path | None:
    """The manifest of a codec of ours: train_codec's (in the workflow folder) or one shipped
    in the package (relative to here, so that a copied project stays up to date). None for a
    published codec, whose manifest fetch_weights writes under resources/weights."""
    if name == "own":
        return Path("results/train_codec/own.json")
    if is_own(name):
        return Path(os.path.relpath(SHIPPED / f"{name}.json"))
    return None


def codec_licence(name: str) -> str:
    """The licence of codec ``name``'s weights as the Hub names it; "yours" for the codec
    train_codec made of your recordings."""
    if name in CODECS:
        return CODECS[name].licence
    if name == "own":
        return "yours"
    return read_json(SHIPPED / name / "config.json")["licence"]


def max_codebooks(name: str) -> int:
    """The codebooks codec ``name`` has (``auto``: the fewer of its two choices)."""
    if name in (DEMO_CODEC, "auto"):  # the shipped codec has fewer than EnCodec 24 kHz
        return read_json(SHIPPED / DEMO_CODEC / "config.json")["codebooks"]
    return CODECS[name].max_codebooks


class WeightsError(RuntimeError):
    """Weights cannot be fetched or loaded; the message says how to get them."""


@contextmanager
def _verified(manifest: str | os.PathLike) -> Iterator[tuple[dict, Path]]:
    """The manifest's info and folder, for the body to load the model from. The files'
    sha256 are checked in threads meanwhile (loading first is safe: safetensors and
    ``weights_only`` run no code from a file); a mismatch raises on exit, so a model from
    changed files is never returned."""
    manifest = Path(manifest)
    info = read_json(manifest)
    paths = {manifest.parent / file: digest for file, digest in info["files"].items()}
    # weights soloist trained itself come back from the rule that trained them
    rule = "train_codec" if info.get("mode") == "trained" else "fetch_weights"
    fix = ("reinstall soloist" if info.get("mode") == "shipped"
           else f"rerun: snakemake --forcerun {rule}")
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise WeightsError(f"{missing[0]} is missing; {fix}")
    with ThreadPoolExecutor(len(paths)) as pool:
        hashes = {path: pool.submit(sha256_file, path) for path in paths}
        try:
            yield info, manifest.parent
        finally:  # also when loading failed: a changed file is the likelier reason
            for path, digest in paths.items():
                if hashes[path].result() != digest:
                    raise WeightsError(f"{path} changed since it was "
                                       f"{'trained' if rule == 'train_codec' else 'fetched'}; "
                                       f"{fix}")
    if info["random"]:
        log.warning(RANDOM_WARNING)


def load_demucs(manifest: str | os.PathLike, device: str | torch.device = "cpu"
                ) -> torch.nn.Module:
    """The Demucs bag of models described by ``manifest``, in eval mode on ``device`` (built
    there, rather than initialised on a CPU and copied)."""
    import torch
    from demucs.apply import BagOfModels
    from demucs.hf import load_safetensors_model
    from safetensors import safe_open

    with _verified(manifest) as (info, folder):
        bag = yaml.safe_load((folder / f"{info['name']}.yaml").read_text())
        models = []
        for sig in bag["models"]:
            path = folder / f"{sig}.safetensors"
            with safe_open(str(path), framework="pt") as f:
                klass = f.metadata().get("klass")
            if klass not in DEMUCS_ALLOWED:  # the loader imports whatever class the file names
                raise WeightsError(f"{path} names model class {klass!r}, "
                                   f"not one of {DEMUCS_ALLOWED}")
            with torch.device(device):
                models.append(load_safetensors_model(path))
    model = BagOfModels(models, bag.get("weights"), bag.get("segment"))
    return model.to(device).eval()


def codec_model(name: str, folder: str | os.PathLike | None = None) -> torch.nn.Module:
    """Codec ``name``'s model: from ``folder`` (``config.json`` + ``model.safetensors``,
    the Hub's layout) with ``from_pretrained``, or random-init from its published config
    when ``folder`` is None. Our own codecs (``is_own``) are soloist.own_codec's."""
    import transformers

    transformers.logging.disable_progress_bar()  # a bar per load and save in every job's log
    if is_own(name):
        from soloist.own_codec import OwnCodec

        return OwnCodec.from_pretrained(folder)
    spec = CODECS[name]
    classes = {"encodec": (transformers.EncodecModel, transformers.EncodecConfig),
               "dac": (transformers.DacModel, transformers.DacConfig)}
    model_class, config_class = classes[spec.family]
    if folder is None:
        return model_class(config_class(**spec.config))
    return model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True)


def load_codec(manifest: str | os.PathLike, codebooks: int | None = None,
               device: str | torch.device = "cpu", precision: str = "fp32",
               compile: bool = False, latents: bool = False) -> Codec:
    """The codec described by ``manifest`` with its first ``codebooks`` codebooks (None: the
    codec's default: all of train_codec's, what a shipped codec's manifest names), in eval
    mode on ``device``, encoding in ``precision`` (fp32, bf16, or auto: bf16 on a GPU), its
    encoder ``torch.compile``d for one input shape if ``compile``; with ``latents`` its
    tokens are its encoder's frames."""
    from soloist.codec import Codec, compiled_encoder

    with _verified(manifest) as (info, folder):
        name = info["name"]
        missing = [f for f in HF_FILES if not (folder / name / f).is_file()]
        if missing:
            raise WeightsError(f"{folder / name / missing[0]} is missing; "
                               "rerun: snakemake --forcerun fetch_weights")
        model = codec_model(name, folder / name)
    # the shipped codec's default is below its codebooks: EnCodec's shapes, a smaller model
    default = info.get("codebooks") or (model.cfg.codebooks if is_own(name)
                                        else CODECS[name].codebooks)
    model = model.to(device).eval()
    compiled = None
    if compile and is_own(name):  # its encoder is EnCodec's, which compiling does not speed up
        log.warning("tokenize.compile: our own codec's encoder runs uncompiled (BENCHMARKS.md)")
    elif compile:
        compiled = compiled_encoder(model.encoder)
    return Codec(name, model, codebooks or default, precision, compiled, latents)
