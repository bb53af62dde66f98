"""Loading the models soloist runs (Demucs, EnCodec) from the folders ``fetch_weights`` fills.

Layouts (what the real loaders read):
- Demucs: the HuggingFace layout, ``<name>.yaml`` (the bag: model signatures) beside one
  ``<sig>.safetensors`` per model, class and init arguments in the safetensors metadata.
  We load it with demucs' own safetensors loader after checking the class against an
  allowlist, so no pickle is ever read.
- EnCodec: the state dict ``encodec_24khz-d7cc33bc.th`` torch.hub downloads, read with
  ``torch.load(weights_only=True)``.

Each model has a manifest ``resources/weights/<mode>/<family>/<name>.json`` with the sha256
of its files; loaders verify them, and say so when the weights are random-init.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from soloist.io import RANDOM_WARNING, read_json, sha256_file

log = logging.getLogger("soloist.weights")

DEMUCS_ALLOWED = {"demucs.htdemucs.HTDemucs", "demucs.hdemucs.HDemucs", "demucs.demucs.Demucs"}
ENCODEC_FILES = {"encodec_24khz": "encodec_24khz-d7cc33bc.th"}
ENCODEC_RATES = {"encodec_24khz": 24_000}  # Hz, known before the model loads


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
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise WeightsError(f"{missing[0]} is missing; rerun: snakemake --forcerun fetch_weights")
    with ThreadPoolExecutor(len(paths)) as pool:
        hashes = {path: pool.submit(sha256_file, path) for path in paths}
        try:
            yield info, manifest.parent
        finally:  # also when loading failed: a changed file is the likelier reason
            for path, digest in paths.items():
                if hashes[path].result() != digest:
                    raise WeightsError(f"{path} changed since it was fetched; "
                                       f"rerun: snakemake --forcerun fetch_weights")
    if info["random"]:
        log.warning(RANDOM_WARNING)


def load_demucs(manifest: str | os.PathLike, device: str | torch.device = "cpu"
                ) -> torch.nn.Module:
    """The Demucs bag of models described by ``manifest``, in eval mode on ``device`` (built
    there, rather than initialised on a CPU and copied)."""
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


def encodec_24khz() -> torch.nn.Module:
    """encodec's own 24 kHz model, random-init: what the loader fills and fetch_weights saves."""
    from encodec import EncodecModel

    with warnings.catch_warnings():  # encodec uses the deprecated weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        return EncodecModel.encodec_model_24khz(pretrained=False)


def load_encodec(manifest: str | os.PathLike, bandwidth: float,
                 device: str | torch.device = "cpu") -> torch.nn.Module:
    """The EnCodec model described by ``manifest`` at ``bandwidth`` kbps, in eval mode on
    ``device`` (built there)."""
    with _verified(manifest) as (info, folder):
        with torch.device(device):
            model = encodec_24khz()
        state = torch.load(folder / ENCODEC_FILES[info["name"]], map_location=device,
                           weights_only=True)
        model.load_state_dict(state)
    model.set_target_bandwidth(bandwidth)
    return model.eval()
