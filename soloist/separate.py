"""Stem separation: Demucs (or given stems) -> a context (backing) and a target (solo) track."""

from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from soloist.io import (
    failed,
    first_failure,
    read_audio,
    read_json,
    touch_empty,
    write_audio,
    write_json,
)

log = logging.getLogger("soloist.separate")


@dataclass
class Item:
    """One track to separate: its ingest outputs in, context/target/status out."""

    track: str
    audio: Path
    info: Path
    context: Path
    target: Path
    status: Path
    stems_dir: Path | None = None  # where all stems go when keep_stems is set


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def mix_roles(stems: dict[str, np.ndarray], context: list[str], target: list[str]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``stems`` {name: [C, N]} into (context, target) by role; raises if a role is empty."""
    for role, names in (("context", context), ("target", target)):
        if not any(n in stems for n in names):
            raise ValueError(f"none of the {role} stems {names} is present (have {sorted(stems)})")
    shape = next(iter(stems.values())).shape
    pick = [sum((stems[n] for n in names if n in stems), np.zeros(shape, np.float32))
            for names in (context, target)]
    return pick[0], pick[1]


def separate_batch(ingested: str | os.PathLike, out_dir: str | os.PathLike, settings: dict,
                   weights: str | os.PathLike | None, sample_rate: int) -> list[dict]:
    """Separate every track of an ingest batch folder into ``out_dir/<track>/``."""
    ingested, out_dir = Path(ingested), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracks = sorted(p.stem for p in (ingested / "info").glob("*.json"))
    items = [Item(t, ingested / "audio" / f"{t}.flac", ingested / "info" / f"{t}.json",
                  out_dir / t / "context.flac", out_dir / t / "target.flac",
                  out_dir / t / "separate.json", out_dir / t / "stems") for t in tracks]
    return separate(items, settings, weights, sample_rate)


def separate(items: list[Item], settings: dict, weights: str | os.PathLike | None,
             sample_rate: int) -> list[dict]:
    """Separate each item with one Demucs model, loaded once, when the first item needs it.

    Items ingested from a stems folder use the given stems. ``settings`` is the config's
    ``separate`` section (roles, shifts, overlap, segment, device, keep_stems). Bad input
    never raises: the item gets a failed status.
    """
    model = None
    weights_random = weights is not None and read_json(weights)["random"]
    statuses = []
    for item in tqdm(items, desc="separate", unit="track", disable=len(items) < 2):
        upstream = first_failure(item.info)
        try:
            if upstream:
                raise _Skip(upstream)
            given = read_json(item.info).get("kind") == "stems"
            if given:
                stems = _given_stems(item, sample_rate)
            else:
                if weights is None:
                    raise ValueError("no Demucs weights given for a track that needs separation")
                if model is None:
                    from soloist.fetch_weights import load_demucs

                    model = load_demucs(weights).to(pick_device(settings["device"]))
                stems = _demucs(model, item, settings, sample_rate)
            context, target = mix_roles(stems, settings["context"], settings["target"])
            write_audio(item.context, context, sample_rate)
            write_audio(item.target, target, sample_rate)
            if settings["keep_stems"] and item.stems_dir is not None:
                for name, audio in stems.items():
                    write_audio(item.stems_dir / f"{name}.flac", audio, sample_rate)
            status = {"ok": True, "stage": "separate", "track": item.track,
                      "stems": sorted(stems), "weights": "given stems" if given else
                      ("random" if weights_random else "pretrained"),
                      "unused_stems": sorted(set(stems) - set(settings["context"])
                                             - set(settings["target"]))}
        except _Skip as skip:
            status = skip.status
        except Exception as e:  # one bad track must not stop the others
            log.exception("separate failed for %s", item.track)
            status = failed("separate", f"{type(e).__name__}: {e}", track=item.track)
        if not status["ok"]:
            touch_empty(item.context, item.target)
        write_json(item.status, status)
        statuses.append(status)
    return statuses


class _Skip(Exception):
    def __init__(self, status: dict):
        self.status = status


def _given_stems(item: Item, sample_rate: int) -> dict[str, np.ndarray]:
    from soloist.ingest import load_audio, stem_files

    folder = Path(read_json(item.info)["source"])
    return {name: load_audio(path, sample_rate) for name, path in stem_files(folder).items()}


@torch.inference_mode()
def _demucs(model: torch.nn.Module, item: Item, settings: dict, sample_rate: int
            ) -> dict[str, np.ndarray]:
    from demucs.apply import apply_model

    audio, rate = read_audio(item.audio)
    if rate != model.samplerate or rate != sample_rate:
        raise ValueError(f"{item.audio} is {rate} Hz; the model wants {model.samplerate} Hz")
    mix = torch.from_numpy(audio)
    # Normalise like the demucs CLI does, then undo it.
    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    device = next(model.parameters()).device
    random.seed(item.track)  # demucs draws its shifts from `random`: keep runs reproducible
    out = apply_model(model, ((mix - mean) / std)[None], shifts=settings["shifts"],
                      overlap=settings["overlap"], segment=settings["segment"],
                      split=True, device=device, progress=sys.stderr.isatty())[0]
    out = out * std + mean
    return {name: out[i].float().cpu().numpy() for i, name in enumerate(model.sources)}
