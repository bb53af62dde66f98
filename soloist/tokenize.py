"""The tokenize stage: codec tokens of the full context and target tracks.

Whole tracks are tokenized (not clips), so changing clip settings never re-tokenizes. The
codec's chunked, batched encoding lives in ``soloist.codec``; this module reads separate's
outputs, runs a batch job's tracks through one loaded codec and writes their codes
(``soloist.tracks`` runs the per-track contract).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from soloist import tracks
from soloist.codec import chunk_batch, encode_stream, resampler
from soloist.device import pick_device
from soloist.io import Background, Clock, prefetch, read_json, read_pcm16, write_npy
from soloist.tracks import Batch, Track, provenance, run_batch
from soloist.weights import load_codec

log = logging.getLogger("soloist.tokenize")
ROLES = ("context", "target")
# Both roles' pieces are decoded at once, so 30 s pieces keep 16 threads busy (10 s ones
# slowed the model load when it still ran beside the reads, BENCHMARKS.md)
PIECE_SECONDS = 30.0


def tokenize(track: str, context: str | os.PathLike, target: str | os.PathLike,
             upstream_status: str | os.PathLike, context_out: str | os.PathLike,
             target_out: str | os.PathLike, status_out: str | os.PathLike,
             weights: str | os.PathLike, settings: dict) -> dict:
    """Tokenize one track's context and target; write both [K, T] int16 .npy (latents:
    [D, T] float16) and a status."""
    upstream = {"context": context, "target": target, "status": upstream_status}
    out = {"context": context_out, "target": target_out, "status": status_out}
    t = Track(track, {"separate": {k: Path(p) for k, p in upstream.items()},
                      "tokenize": {k: Path(p) for k, p in out.items()}}, "tokenize",
              upstream="separate")
    return tracks.run_track(t, lambda todo: tokenize_tracks(todo, weights, settings))


def tokenize_batch(records: dict[str, str | os.PathLike], record: str | os.PathLike,
                   weights: str | os.PathLike, settings: dict, shape: dict) -> list[dict]:
    """Tokenize every track of the upstream ``records`` by stage (a separate batch's and
    augment's of its variants, or an ingest batch's for task: continuation) into the batch
    of ``record``, keeping the tracks already tokenized from the same audio with the same
    ``shape`` and weights."""
    upstream, made = tracks.made_from(records)
    model = read_json(weights)
    provenances = {t: provenance("tokenize", shape, model, p) for t, p in made.items()}
    return run_batch(Batch.of("tokenize", record), provenances,
                     lambda todo: tokenize_tracks(todo, weights, settings), upstream)


def tokenize_tracks(todo: list[Track], weights: str | os.PathLike, settings: dict) -> None:
    """Tokenize ``todo`` (separated, not failed upstream) with one codec, loaded once,
    reading the next tracks in threads while the GPU encodes. A bad track gets a failed
    status; the others go on."""
    clock, device = Clock(), pick_device(settings["device"])
    # Loaded before the reads start: beside 16 reader threads it took 4x as long (0.45
    # vs 0.11 s on an H200 host), more than the reading it hid (BENCHMARKS.md)
    with clock("model load"):
        codec = load_codec(weights, settings["codebooks"], device, settings["precision"],
                           settings["compile"], settings.get("latents", False))
    manifest, rate = read_json(weights), codec.sample_rate
    batch = chunk_batch(settings["batch_size"], codec, settings["chunk_seconds"],
                        settings["warmup_seconds"])
    # 4 tracks read at once and 8 ahead (their mono audio waits on the GPU): with fewer,
    # short tracks left the I/O threads idle
    reads = prefetch(lambda t: read_roles(t, device, rate), todo, workers=4, ahead=8)
    info = {"stage": "tokenize", "model": codec.name, "files": manifest["files"],
            "sample_rate": rate, "frame_rate": codec.frame_rate,
            "cardinality": None if codec.continuous else codec.cardinality,
            "weights": "random" if manifest["random"] else manifest["mode"]}
    if codec.continuous:  # float16 latents [D, T], not codes
        info["latents"] = codec.dimension
    by_name = {t.name: t for t in todo}
    codes: dict[str, dict[str, np.ndarray]] = {}
    written: list[Future] = []
    bar = tqdm(total=len(todo), desc="tokenize", unit="track", disable=len(todo) < 2)

    def audio() -> Iterator[tuple[tuple[str, str], torch.Tensor, int]]:
        for t, monos, error in clock.iter("waiting for audio", reads):
            if error is not None:
                tracks.fail(t, error)
                bar.update()
                continue
            for role, mono in zip(roles_of(t), monos, strict=True):
                if mono.is_cuda:  # made on the reader's stream, used on this one
                    mono.record_stream(torch.cuda.current_stream(mono.device))
                yield (t.name, role), mono, rate

    with Background() as writer:
        for (name, role), c in encode_stream(codec, audio(), settings["chunk_seconds"],
                                             batch, settings["warmup_seconds"], clock):
            codes.setdefault(name, {})[role] = c
            if len(codes[name]) == len(roles_of(by_name[name])):
                t, pair = by_name[name], codes.pop(name)
                with clock("waiting for writes"):
                    written.append(writer.submit(
                        tracks.attempt, t, lambda t=t, pair=pair: _write(t, pair, info)))
                bar.update()
        bar.close()
        with clock("waiting for writes"):
            writer.close()
    for f in written:
        f.result()
    log.info("tokenized %d tracks in %s", len(todo), clock)


def roles_of(track: Track) -> dict[str, Path]:
    """The audio each of the track's token files is made from, by role: the separated
    context and target, or (task: continuation) the ingested recording whole, its mix."""
    if track.whole:
        return {"mix": track.inputs["audio"]}
    return {role: track.inputs[role] for role in ROLES}


def read_roles(track: Track, device: torch.device, sample_rate: int) -> list[torch.Tensor]:
    """Each role's mono mix [N'] at ``sample_rate`` on ``device`` (``read_audio(...).mean(0)``
    resampled). On a GPU the copy, the mix and the resampling run here, in the reader
    thread, on a stream of its own: they overlap the encoding instead of waiting for it."""
    pairs = read_pcm16(list(roles_of(track).values()), PIECE_SECONDS)
    if min(len(pcm) for pcm, _ in pairs) == 0:
        raise ValueError(f"no samples in the audio {track.upstream} wrote")
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
        monos = [resampler(rate, sample_rate, device)(
                     torch.from_numpy(pcm).to(device).float().mean(1) / 32768)
                 for pcm, rate in pairs]
    if stream:
        stream.synchronize()
    return monos


def _write(track: Track, codes: dict[str, np.ndarray], info: dict) -> dict:
    for role, c in codes.items():
        write_npy(track.out[role], c)
    shape = next(iter(codes.values())).shape
    # stems of a random-init Demucs are noise, whatever codec tokenizes them
    if read_json(track.inputs["status"]).get("weights") == "random":
        info = info | {"weights": "random"}
    return {"ok": True, **info, "track": track.name, "roles": list(codes),
            "codebooks": int(shape[0]), "frames": int(shape[1])}
