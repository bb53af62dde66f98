"""Continue recordings: a model of task continuation extends each one by N seconds.

Each input goes through ``ingest.ingest_sheet`` like a sheet's rows, and the codec encodes it
whole; ``extend`` then writes what comes next one window at a time, each window's context
the last window of audio before it (the recording's end, then what was generated), and the
codec decodes the new frames. A bad input ends as one error line; the others complete.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from soloist.codec import Codec, decode, encode, resampler
from soloist.condition import model_tags
from soloist.generate import Sampling, generate, regress
from soloist.ingest import ingest_sheet
from soloist.io import RANDOM_WARNING, read_audio, unclipped, write_audio, write_json
from soloist.model import Soloist, task_error
from soloist.weights import load_codec

log = logging.getLogger("soloist.continuation")


def extend(model: Soloist, codes: torch.Tensor, frames: int, sampling: Sampling,
           seed: int = 0, tags: torch.Tensor | None = None) -> torch.Tensor:
    """The ``frames`` frames [K, frames] that follow codes [K, T] (latents: [D, T]), a window
    of the model's at a time, each read from the window of frames before it (tags: int64
    [columns])."""
    window = model.cfg.max_frames
    context, new = codes[:, -window:], []
    tags = None if tags is None else tags[None]
    for i, start in enumerate(range(0, frames, window)):
        n = min(window, frames - start)
        step = regress(model, context[None], n, sampling=sampling, tags=tags)[0] \
            if model.cfg.latents else \
            generate(model, context[None], n, sampling=sampling, seed=seed + i, tags=tags)[0]
        new.append(step)
        context = torch.cat([context, step], -1)[:, -window:]
    return torch.cat(new, -1) if new else codes[:, :0]


def continue_recordings(inputs: list[tuple[str, str, str]], model: Soloist,
                        out_dir: str | os.PathLike, config: dict,
                        codec_manifest: str | os.PathLike, seconds: float,
                        sampling: Sampling, seed: int = 0, tags: dict[str, str] | None = None,
                        tag_cfg: dict[str, float] | None = None) -> dict:
    """Write ``out_dir/<name>/{continuation,extended}.wav`` for each input (name, kind,
    source) and ``out_dir/continue.json``, the summary it returns. ``tags`` (a model
    conditioned on tags: for every input) are guided by ``tag_cfg``, by column."""
    if error := task_error(model.info, "continuation"):
        raise ValueError(error)
    out_dir = Path(out_dir)
    device = model.heads.weight.device
    ids, scales = model_tags(model.info, [tags or {}], tag_cfg or {})
    sampling = replace(sampling, tag_cfg=scales)
    tag_ids = None if ids is None else ids[0].to(device)
    codec = load_codec(codec_manifest, model.info["codec"]["codebooks"], device,
                       latents=bool(model.cfg.latents))
    frames = round(seconds * codec.frame_rate)
    results = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".work-") as work:
        for info in ingest_sheet(inputs, work, config["ingest"]):
            result = {"name": info["track"], "source": info["source"], "ok": info["ok"]}
            if info["ok"]:
                result["seconds"] = _extend_one(model, codec, Path(info["audio"]),
                                                out_dir / info["track"], frames, sampling, seed,
                                                tag_ids)
            else:
                result["reason"] = info["reason"]
                log.warning("%s: %s", info["track"], info["reason"])
            results.append(result)
    summary = {"tracks": results, "seconds": seconds, "weights": model.info["weights"]}
    if model.info["weights"] == "random":
        summary["warning"] = RANDOM_WARNING
    write_json(out_dir / "continue.json", summary)
    return summary


def _extend_one(model: Soloist, codec: Codec, audio: Path, folder: Path, frames: int,
                sampling: Sampling, seed: int, tags: torch.Tensor | None) -> float:
    """One recording extended: ``folder/continuation.wav`` (the new audio alone) and
    ``extended.wav`` (the recording, then the continuation), at the codec's rate; the
    recording's seconds."""
    wave, rate = read_audio(audio)
    mono = wave.mean(0)
    codes = encode(codec, [mono], rate, chunk_seconds=10.0, warmup_seconds=0.5)[0]
    tokens = codes.astype(np.float32 if codec.continuous else np.int64)
    new = extend(model, torch.from_numpy(tokens).to(codec.device), frames, sampling, seed, tags)
    continuation = decode(codec, new)
    original = resampler(rate, codec.sample_rate, torch.device("cpu"))(
        torch.from_numpy(mono)).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in (("continuation", continuation),
                    ("extended", np.concatenate([original, continuation]))):
        write_audio(folder / f"{name}.wav", unclipped(x[None]), codec.sample_rate,
                    format="WAV")
    return len(mono) / rate
