"""Play along: any backing track in, a solo over the whole of it and the mix out.

Each input goes through the dataset's own stages, one call each: ``ingest`` (any source a
track sheet takes), ``separate`` (the separator's context roles, unless the input already is
a backing), the codec's ``encode``; then ``generate_long`` writes the solo window by window
and the codec decodes it. The model folder, never the current config, says which separator
roles, codec and frame rate: a model always reads the tokens it was trained on. A bad input
ends as one error line; the others complete. accompany composes the stages' entry points
(``ingest.ingest_sheet``, ``separate.separate``, at the stages' own
``tracks.LAYOUT`` in a work folder), never their helpers.
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from soloist import fit
from soloist import ingest as ingest_stage
from soloist import separate as separate_stage
from soloist.codec import decode, encode, resampler
from soloist.condition import model_tags
from soloist.device import pick_device
from soloist.generate import Sampling, generate_long
from soloist.io import (
    PAGE_STYLE,
    RANDOM_WARNING,
    Clock,
    atomic_path,
    io_pool,
    peak_db,
    read_audio,
    read_json,
    unclipped,
    write_audio,
    write_json,
    write_spectrograms,
)
from soloist.model import Soloist, task_error
from soloist.tracks import Batch, track_of
from soloist.weights import load_codec

log = logging.getLogger("soloist.accompany")
# compile: auto compiles the decode step for jobs of at least this many steps (about one per
# frame of the longest solo of each batch): on an H200 a compiled step of base saves 0.49 ms
# at batch 1 and 0.58 ms at batch 64, and compiling costs 14.5 s (BENCHMARKS.md)
COMPILE_MIN_STEPS = 30_000


class AccompanyError(RuntimeError):
    """Nothing can be accompanied (bad model folder, codec weights that do not match)."""


@dataclass
class Backing:
    """One input, as a track sheet row: its name (its output folder), kind, source and
    tags (for a model conditioned on tags: the sheet's other columns)."""

    name: str
    kind: str  # url | file | stems | demo (source: the demo's mixture)
    source: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _Track:
    name: str
    source: str
    audio: Path | None = None  # the backing, once ingested (and separated)
    reason: str | None = None  # why it failed
    stage: str | None = None
    fit: dict | None = None  # its solo's truth-free fit figures (soloist.fit.backing_fit)


def load_model(source: str | os.PathLike, device: str = "auto") -> Soloist:
    """A model folder or Hub id's model on ``device`` (auto: a GPU if there is one), in bf16
    on a GPU."""
    device = pick_device(device)
    return Soloist.from_pretrained(source, device,
                                   torch.bfloat16 if device.type == "cuda" else None)


def accompany(inputs: list[Backing], model: Soloist, out_dir: str | os.PathLike, config: dict,
              weights: dict[str, str | os.PathLike], sampling: Sampling, seed: int = 0,
              overlap: float = 2.5, seconds: float | None = None, separate: bool = True,
              batch_size: int | str = "auto", compile: bool | str = "auto",
              progress: bool = True, name: str = "", tag_cfg: dict[str, float] | None = None
              ) -> dict:
    """Write ``out_dir/<name>/{backing,solo,mix}.wav`` for each input that can be played
    with, ``out_dir/index.html`` and ``out_dir/accompany.json``; return that summary.

    ``model`` (``load_model``'s) runs on its device. ``config`` is the validated workflow
    config (its ingest, separate and tokenize sections say how to read, run and batch; never
    which roles or codec). ``weights``: the ``demucs`` and ``codec`` manifests of the
    model's separator and codec. ``overlap`` and ``seconds`` (only the first seconds of each
    backing) are in seconds; ``compile`` (auto: for jobs long enough to repay it) fuses the
    decode step with torch.compile; ``name`` names the model on the page; ``tag_cfg`` is
    the guidance scale of each tag column (``sampling.tag_cfg`` is set from it).
    """
    if error := task_error(model.info, "solo"):
        raise AccompanyError(error)
    sampling, tags = _tagged(model, inputs, sampling, tag_cfg or {})
    out_dir, clock = Path(out_dir), Clock()
    device = model.heads.weight.device
    codec_info = model.info["codec"]
    frame_rate = codec_info["frame_rate"]
    overlap_frames = round(overlap * frame_rate)
    if not 0 <= overlap_frames < model.cfg.max_frames:
        raise AccompanyError(f"the overlap ({overlap:g} s) must be shorter than the model's "
                             f"window ({model.cfg.max_frames / frame_rate:g} s)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".work-") as work:
        with clock("ingest"):
            tracks = _ingest(inputs, Path(work), config, seconds)
        if separate:
            with clock("separate"):
                _separate(tracks, Path(work), {**config["separate"], "device": str(device)},
                          config["ingest"]["sample_rate"], model.info["separator"],
                          weights.get("demucs"))
        backings = _read_backings(tracks, config["ingest"]["silence_db"], seconds)
    ok = [t for t in tracks if t.reason is None]
    result = {"model": name, "sampling": asdict(sampling), "seed": seed,
              "overlap_seconds": overlap, "separate": separate, "weights": model.info["weights"]}
    if any(b.tags for b in inputs):
        result["tags"] = {b.name: b.tags for b in inputs if b.tags}
    if ok:
        _check_codec(weights["codec"], codec_info)
        codec = load_codec(weights["codec"], codec_info["codebooks"], device)
        with clock("tokenize"):
            s = config["tokenize"]
            codes = encode(codec, [backings[t.name][0].mean(0) for t in ok],
                           backings[ok[0].name][1], s["chunk_seconds"], s["batch_size"],
                           s["warmup_seconds"])
        with clock("generate"):
            solos = _generate(model, codes, [t.name for t in ok], overlap_frames, sampling,
                              seed, batch_size, compile, progress,
                              None if tags is None else [tags[t.name] for t in ok])
        waves = {}
        with clock("decode and write"):
            for t, solo in zip(ok, solos, strict=True):
                backing, rate = backings[t.name]
                wave = _to_rate(decode(codec, solo), codec.sample_rate, rate, backing.shape[1],
                                device)
                _write_track(out_dir / t.name, backing, wave, rate)
                waves[t.name] = wave
        with clock("fit"):  # read off the audio, as a listener hears it
            for t in ok:
                t.fit = fit.backing_fit(waves[t.name], backings[t.name][0].mean(0),
                                        backings[t.name][1], str(device))
        solo_seconds = sum(backings[t.name][0].shape[1] / backings[t.name][1] for t in ok)
        result |= {"solo_seconds": round(solo_seconds, 3),
                   "generate_seconds": round(clock.spans["generate"], 3),
                   "realtime": round(solo_seconds / clock.spans["generate"], 2)}
    result["tracks"] = [_entry(t, backings) for t in tracks]
    if model.info["weights"] == "random":
        result["warning"] = RANDOM_WARNING
    write_json(out_dir / "accompany.json", result)
    _write_page(out_dir / "index.html", result, model)
    log.info("accompanied %d of %d tracks in %s", len(ok), len(tracks), clock)
    return result


def _tagged(model: Soloist, inputs: list[Backing], sampling: Sampling,
            tag_cfg: dict[str, float]) -> tuple[Sampling, dict[str, torch.Tensor] | None]:
    """``sampling`` with the guidance scale of each of the model's tag columns, and each
    input's tag ids (None for a model without tags)."""
    try:
        tags, scales = model_tags(model.info, [b.tags for b in inputs], tag_cfg)
    except ValueError as e:
        raise AccompanyError(str(e)) from None
    ids = None if tags is None else {b.name: t for b, t in zip(inputs, tags, strict=True)}
    return replace(sampling, tag_cfg=scales), ids


def _generate(model: Soloist, codes: list[np.ndarray], names: list[str], overlap: int,
              sampling: Sampling, seed: int, batch_size: int | str, compile: bool | str,
              progress: bool, tags: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """Solo codes [K, N] for backing codes [K, N], a progress bar per backing. A backing's
    noise is seeded by (seed, its name): its solo does not depend on the others."""
    device, rate = model.heads.weight.device, model.info["codec"]["frame_rate"]
    bars = [tqdm(total=round(c.shape[1] / rate, 1), desc=name, unit="s", position=i,
                 disable=not progress, dynamic_ncols=True)
            for i, (name, c) in enumerate(zip(names, codes, strict=True))]

    def advance(i: int, frames: int) -> None:
        bars[i].update(round(frames / rate, 1) - bars[i].n)

    batch = _batch_size(batch_size, device)
    longest = sorted((c.shape[1] for c in codes), reverse=True)[::batch]  # of each batch
    solos = generate_long(model, [torch.from_numpy(c).long() for c in codes], overlap, sampling,
                          [zlib.crc32(f"{seed}:{name}".encode()) for name in names], batch,
                          compile=_compile(compile, device, sum(longest)), progress=advance,
                          tags=tags)
    for bar in bars:
        bar.close()
    return solos


def _entry(t: _Track, backings: dict[str, tuple[np.ndarray, int]]) -> dict:
    """A track's line in accompany.json: its length, or where and why it failed."""
    entry = {"name": t.name, "source": t.source, "ok": t.reason is None}
    if t.reason is not None:
        return entry | {"stage": t.stage, "reason": t.reason}
    audio, rate = backings[t.name]
    return entry | {"seconds": round(audio.shape[1] / rate, 3)} | \
        ({"fit": t.fit} if t.fit else {})


def _ingest(inputs: list[Backing], work: Path, config: dict, seconds: float | None
            ) -> list[_Track]:
    """Ingest every input (a URL may list several tracks: ``name.001``, ...)."""
    tracks = []
    for info in ingest_stage.ingest_sheet([(b.name, b.kind, b.source) for b in inputs], work,
                                          config["ingest"]):
        track = _Track(info["track"], info["source"], info["audio"])
        if not info["ok"]:
            track.reason, track.stage = info["reason"], "ingest"
        elif seconds is not None:
            _trim(track.audio, seconds)
        tracks.append(track)
    return tracks


def _batches(work: Path) -> tuple[Batch, Batch]:
    """Where the inputs are ingested and separated: the stages' own layout, in ``work``."""
    return Batch.of("ingest", work / "ingest.json"), Batch.of("separate", work / "separate.json")


def _trim(path: Path, seconds: float) -> None:
    """Keep the first ``seconds`` of an audio file: nothing later is separated."""
    audio, rate = read_audio(path)
    if audio.shape[1] > round(seconds * rate):
        write_audio(path, audio[:, :round(seconds * rate)], rate)


def _separate(tracks: list[_Track], work: Path, settings: dict, sample_rate: int,
              separator: dict, demucs: str | os.PathLike | None) -> None:
    """Replace each ingested track by its backing: the separator's context roles."""
    settings = {**settings, "model": separator["model"], "context": separator["context"],
                "target": separator["target"], "keep_stems": False}
    todo = [t for t in tracks if t.reason is None]
    jobs = [track_of(t.name, *_batches(work)) for t in todo]
    statuses = separate_stage.separate(jobs, settings, demucs, sample_rate)
    for t, job, status in zip(todo, jobs, statuses, strict=True):
        t.audio = job.out["context"]
        if not status["ok"]:
            t.reason, t.stage = status["reason"], "separate"


def _read_backings(tracks: list[_Track], silence_db: float, seconds: float | None
                   ) -> dict[str, tuple[np.ndarray, int]]:
    """Each good track's backing ([C, N] float32, rate), its first ``seconds`` if given (given
    stems are separated whole); a silent one fails its track."""
    backings = {}
    for t in tracks:
        if t.reason is not None:
            continue
        audio, rate = read_audio(t.audio)
        if seconds is not None:
            audio = audio[:, :round(seconds * rate)]
        if peak_db(audio) < silence_db:
            t.reason, t.stage = (f"the backing is silent (peak below {silence_db:g} dBFS): "
                                 "nothing to play along with"), "backing"
            continue
        backings[t.name] = audio, rate
    return backings


def _check_codec(manifest: str | os.PathLike, codec_info: dict) -> None:
    """The codec here must be the one whose tokens the model learned."""
    here = read_json(manifest)
    if here["name"] != codec_info["model"] or here["files"] != codec_info["files"]:
        raise AccompanyError(
            f"the codec weights {manifest} ({here['name']}, {here['mode']}) are not those the "
            f"model was trained on ({codec_info['model']}, {codec_info['weights']}, files "
            f"{codec_info['files']})")


def _batch_size(setting: int | str, device: torch.device) -> int:
    """Backings decoded side by side: auto is 64 on a GPU (the step then reads its weights
    once for 64 solos), 8 on a CPU."""
    if setting != "auto":
        return int(setting)
    return 64 if device.type == "cuda" else 8


def _compile(setting: bool | str, device: torch.device, steps: int) -> bool:
    """Whether to compile the decode step: auto on a GPU for jobs of COMPILE_MIN_STEPS, where
    the time it saves repays its compile."""
    if setting == "auto":
        return device.type == "cuda" and steps >= COMPILE_MIN_STEPS
    return bool(setting)


def _to_rate(wave: np.ndarray, rate: int, new_rate: int, samples: int,
             device: torch.device) -> np.ndarray:
    """``wave`` [N] at ``rate`` resampled to ``new_rate``, cut or zero-padded to ``samples``
    (the codec's last frame may run past the backing's end)."""
    x = resampler(rate, new_rate, device)(torch.from_numpy(wave).to(device)).cpu().numpy()
    return np.pad(x[:samples], (0, max(0, samples - len(x))))


def _write_track(folder: Path, backing: np.ndarray, solo: np.ndarray, rate: int) -> None:
    """backing.wav and mix.wav [C, N], solo.wav mono [N], all N samples long; the mix is
    scaled down as a whole if it would clip."""
    mix = backing + solo[None]
    files = {"backing": backing, "solo": solo[None],
             "mix": unclipped(mix)}
    list(io_pool().map(lambda f: write_audio(folder / f"{f[0]}.wav", f[1], rate, format="WAV"),
                       files.items()))
    write_spectrograms(folder / "spectrogram.png",
                       {"backing": backing.mean(0), "generated solo": solo}, rate)


def _write_page(path: Path, result: dict, model: Soloist) -> None:
    """The listening page: each backing, its solo and the mix, and the inputs that failed."""
    warning = (f'<p class="warning">{html.escape(result["warning"])}</p>'
               if "warning" in result else "")
    rows, failures = [], []
    for t in result["tracks"]:
        name = html.escape(t["name"])
        if not t["ok"]:
            failures.append(f"<tr><td>{name}</td><td>{html.escape(t['source'])}</td>"
                            f"<td>{html.escape(t['stage'])}</td>"
                            f"<td>{html.escape(t['reason'])}</td></tr>")
            continue
        cells = "".join(f'<td><audio controls preload="auto" src="{name}/{part}.wav"></audio>'
                        "</td>" for part in ("backing", "solo", "mix"))
        rows.append(f"<tr><td>{name}<br><small>{t['seconds']:.1f} s</small>"
                    f"{_fit_cell(t.get('fit'))}</td>{cells}"
                    f'<td><img src="{name}/spectrogram.png" alt="spectrogram">'
                    "</td></tr>")
    failed = ("<h2>Not played</h2><table><tr><th>input</th><th>source</th><th>stage</th>"
              f"<th>reason</th></tr>{''.join(failures)}</table>") if failures else ""
    s = result["sampling"]
    speed = (f", {result['realtime']:.1f}x realtime" if "realtime" in result else "")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>soloist: play along</title>
<style>{PAGE_STYLE}</style>
</head><body>
<h1>Play along</h1>{warning}
<p>Model {html.escape(result['model'])} ({model.num_params() / 1e6:.1f}M parameters,
{model.info['codec']['model']} tokens); seed {result['seed']}, temperature
{s['temperature']:g}, top-k {s['top_k']}, top-p {s['top_p']:g}, CFG {s['cfg_scale']:g},
windows overlapping by {result['overlap_seconds']:g} s{speed}.</p>
<p>Under each input: the solo's fit to the backing's key and beats as trackers estimate
them (no truth needed): in key (the share of its pitched time in the key's scale) and on
beat (of its onsets on a beat or its triplets, within 50 ms), beside the same solo a
tritone up and half a beat late, which should score lower.</p>
<table><tr><th>input</th><th>backing</th><th>solo</th><th>mix</th><th>spectrograms</th></tr>
{chr(10).join(rows)}
</table>{failed}</body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)


def _fit_cell(figures: dict | None) -> str:
    if not figures:
        return ""
    lines = [f"key {html.escape(figures['key'])}, {figures['tempo_bpm']:g} bpm"]
    lines += [f"{f.replace('_', ' ')} {v:.2f} (tritone {figures['tritone'][f]:.2f}, half a "
              f"beat late {figures['half_beat'][f]:.2f})"
              for f, v in figures["generated"].items()]
    return "<br><small>" + "<br>".join(lines) + "</small>"


def log_to_mlflow(out_dir: str | os.PathLike, summary: dict, run_id: str,
                  mlflow_cfg: dict) -> None:
    """Log the play-along outputs and speed into the training's MLflow run."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_cfg["tracking_uri"])
    with mlflow.start_run(run_id=run_id):
        ok = [t for t in summary["tracks"] if t["ok"]]
        mlflow.log_metrics({"accompany/tracks_ok": len(ok),
                            "accompany/tracks_failed": len(summary["tracks"]) - len(ok)} |
                           {f"accompany/{k}": summary[k] for k in
                            ("solo_seconds", "generate_seconds", "realtime") if k in summary} |
                           _fit_means(ok))
        mlflow.log_artifacts(str(out_dir), artifact_path="accompany")


def _fit_means(tracks: list[dict]) -> dict[str, float]:
    """The truth-free fit figures' means over the tracks played: accompany/fit/<solo>/<fig>."""
    fits = [t["fit"] for t in tracks if "fit" in t]
    return {f"accompany/fit/{solo}/{figure}": float(np.mean([f[solo][figure] for f in fits]))
            for solo in ("generated", "tritone", "half_beat") if fits
            for figure in fits[0][solo]}
