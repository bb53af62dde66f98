"""EnCodec tokens of the full context and target tracks.

Whole tracks are tokenized (not clips), so changing clip settings never re-tokenizes.
Audio is cut into ``chunk_seconds`` chunks that are encoded in batches across both
roles; codes near chunk seams may differ from encoding the whole track at once.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from tqdm import tqdm

from soloist.fetch_weights import load_encodec
from soloist.io import (
    failed,
    first_failure,
    read_audio,
    read_json,
    touch_empty,
    write_json,
    write_npy,
)
from soloist.separate import pick_device

log = logging.getLogger("soloist.tokenize")


@torch.inference_mode()
def encode(model: torch.nn.Module, tracks: list[np.ndarray], sample_rate: int,
           chunk_seconds: float, batch_size: int) -> list[np.ndarray]:
    """EnCodec codes of each mono track [N] at ``sample_rate``: one int16 [K, T] per track.

    T = ceil(N' / hop) where N' is the length at the model's rate and hop its frame hop.
    """
    device = next(model.parameters()).device
    hop = int(np.prod(model.encoder.ratios))
    chunk = max(hop, round(chunk_seconds * model.sample_rate) // hop * hop)
    resampled = [AF.resample(torch.from_numpy(t), sample_rate, model.sample_rate)
                 for t in tracks]
    # (track, start) of every chunk, then batches of chunks.
    pieces = [(i, s) for i, t in enumerate(resampled) for s in range(0, t.numel(), chunk)]
    codes: dict[tuple[int, int], torch.Tensor] = {}
    for b in range(0, len(pieces), batch_size):
        batch = pieces[b:b + batch_size]
        x = torch.zeros(len(batch), 1, chunk)
        for j, (i, s) in enumerate(batch):
            piece = resampled[i][s:s + chunk]
            x[j, 0, :piece.numel()] = piece
        frames = model.encode(x.to(device))
        out = torch.cat([f[0] for f in frames], dim=-1).cpu()  # [B, K, chunk / hop]
        for j, key in enumerate(batch):
            codes[key] = out[j]
    result = []
    for i, t in enumerate(resampled):
        n_frames = math.ceil(t.numel() / hop)
        full = torch.cat([codes[(i, s)] for s in range(0, t.numel(), chunk)], dim=-1)
        result.append(full[:, :n_frames].numpy().astype(np.int16))
    return result


def tokenize(track: str, context: str | os.PathLike, target: str | os.PathLike,
             upstream_status: str | os.PathLike, context_out: str | os.PathLike,
             target_out: str | os.PathLike, status_out: str | os.PathLike,
             weights: str | os.PathLike, settings: dict, model: torch.nn.Module | None = None
             ) -> dict:
    """Tokenize one track's context and target; write both [K, T] int16 .npy and a status."""
    try:
        status = first_failure(upstream_status)
        if status is None:
            if model is None:
                model = load_encodec(weights, settings["bandwidth"])
                model.to(pick_device(settings["device"]))
            audio = []
            for path in (context, target):
                a, rate = read_audio(path)
                audio.append(a.mean(0))
            ctx, tgt = encode(model, audio, rate, settings["chunk_seconds"],
                              settings["batch_size"])
            write_npy(context_out, ctx)
            write_npy(target_out, tgt)
            status = {
                "ok": True, "stage": "tokenize", "track": track, "codebooks": int(ctx.shape[0]),
                "frames": int(ctx.shape[1]), "frame_rate": float(model.frame_rate),
                "bandwidth": settings["bandwidth"], "cardinality": int(model.quantizer.bins),
                "weights": "random" if read_json(weights)["random"] else "pretrained",
            }
    except Exception as e:  # one bad track must not stop the others
        log.exception("tokenize failed for %s", track)
        status = failed("tokenize", f"{type(e).__name__}: {e}", track=track)
    if not status["ok"]:
        touch_empty(context_out, target_out)
    write_json(status_out, status)
    return status


def tokenize_batch(separated: str | os.PathLike, out_dir: str | os.PathLike,
                   weights: str | os.PathLike, settings: dict) -> list[dict]:
    """Tokenize every track of a separate batch folder into ``out_dir/<track>/``.

    EnCodec is loaded once, when the first track needs it.
    """
    separated, out_dir = Path(separated), Path(out_dir)
    tracks = sorted(d.name for d in separated.iterdir() if d.is_dir())
    model, statuses = None, []
    for t in tqdm(tracks, desc="tokenize", unit="track", disable=len(tracks) < 2):
        if model is None and first_failure(separated / t / "separate.json") is None:
            model = load_encodec(weights, settings["bandwidth"])
            model.to(pick_device(settings["device"]))
        statuses.append(tokenize(t, separated / t / "context.flac", separated / t / "target.flac",
                                 separated / t / "separate.json", out_dir / t / "context.npy",
                                 out_dir / t / "target.npy", out_dir / t / "tokens.json",
                                 weights, settings, model=model))
    return statuses
