"""The evaluate_codec stage: how well soloist's own codec reconstructs held-out music.

For each held-out track (the sheet's test split, its ingested audio, mono, at the codec's
rate): the mel distance (log-mel L1), the multi-resolution STFT distance and the SI-SDR of
the codec's reconstruction against the input at each bitrate (its first k codebooks), side
by side with Opus at the same bitrate (ffmpeg's libopus: a real anchor) and with the same
codec untrained (random weights, codebooks drawn from the input as training starts them).
Writes ``metrics.json``, a plot of the distances against the bitrate, and a listening page
(input, ours, Opus, untrained), and logs them into the codec's MLflow run.
"""

from __future__ import annotations

import html
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from soloist import fit
from soloist.codec import Codec, decode, encode
from soloist.distances import Distances
from soloist.io import (
    PAGE_STYLE,
    atomic_path,
    read_audio,
    read_json,
    write_audio,
    write_json,
    write_png,
    write_spectrograms,
)
from soloist.own_codec import OwnCodec
from soloist.synth import make_song
from soloist.weights import load_codec

log = logging.getLogger("soloist.evaluate_codec")
OPUS_MIN_KBPS = 6.0  # libopus's lowest bitrate


def evaluate_codec(manifest: str | os.PathLike, audio: list[str | os.PathLike],
                   out_dir: str | os.PathLike, config: dict,
                   solos: dict[str, dict[str, str]] | None = None) -> dict:
    """Score the codec of ``manifest`` (``train_codec``'s ``own.json``) on the first
    ``evaluate_codec.seconds`` of each ``audio`` file, and on ``solos`` (held-out demo
    songs' saxophone ``stem`` and ``truth``, by name): does a round trip keep their pitch,
    and their fit? Writes ``out_dir``."""
    cfg, out_dir = config["evaluate_codec"], Path(out_dir)
    if not audio:
        raise RuntimeError("no held-out audio: the sheet has no ingested track in the test "
                           "split")
    ours = load_codec(manifest)
    rate, arch = ours.sample_rate, ours.model.cfg
    tracks = {Path(p).stem: mono(p, rate, cfg["seconds"]) for p in audio}
    untrained = untrained_like(ours)
    distances = Distances(rate)
    solo_audio = {name: _solo(paths, rate, cfg["seconds"]) for name, paths in
                  (solos or {}).items()}
    rows = []
    for k in _codebook_counts(arch.codebooks):
        kbps = k * ours.frame_rate * math.log2(arch.codebook_size) / 1000
        opus_kbps = max(kbps, OPUS_MIN_KBPS)
        row = {"codebooks": k, "kbps": round(kbps, 3), "opus_kbps": round(opus_kbps, 3)}
        for name, method in (("ours", lambda x, k=k: roundtrip(ours, x, k)),
                             ("opus", lambda x, b=opus_kbps: opus(x, rate, b)),
                             ("untrained", lambda x, k=k: roundtrip(untrained, x, k))):
            scores = [distances.scores(method(x), x) for x in tracks.values()]
            row[name] = {m: float(np.mean([s[m] for s in scores])) for m in scores[0]}
            if solo_audio:
                row[name] |= _solo_scores(solo_audio, method, rate)
        rows.append(row)
        log.info("%d codebooks (%.2f kbps): mel %.3f, opus %.3f, untrained %.3f; pitch kept "
                 "%s", k, kbps, row["ours"]["mel"], row["opus"]["mel"],
                 row["untrained"]["mel"], {n: row[n].get("pitch") for n in row
                                           if isinstance(row[n], dict)})
    metrics = {"tracks": len(tracks), "seconds": cfg["seconds"], "sample_rate": rate,
               "solos": len(solo_audio), "bitrates": rows, **_summary(rows)}
    if solo_audio:
        metrics["solo_original"] = _mean([fit.truth_scores(h, truth, start) for h, truth, start
                                          in (s[1:] for s in solo_audio.values())])
    write_json(out_dir / "metrics.json", metrics)
    _plot(rows, out_dir / "distances.png")
    examples = _examples(tracks, ours, untrained, rate, out_dir)
    _page(out_dir / "index.html", examples, metrics)
    _log_to_mlflow(Path(manifest).parent, out_dir, metrics, config["mlflow"])
    return metrics


def mono(path: str | os.PathLike, rate: int, seconds: float, start: float = 0.0
         ) -> torch.Tensor:
    """``seconds`` of an audio file from ``start`` (s), mono [N] at ``rate``."""
    import torchaudio.functional as AF

    audio, sr = read_audio(path)
    mono = torch.from_numpy(audio[:, round(start * sr):round((start + seconds) * sr)].mean(0))
    return AF.resample(mono, sr, rate)


def _solo(paths: dict[str, str], rate: int, seconds: float
          ) -> tuple[torch.Tensor, fit.Heard, fit.Truth, float]:
    """A held-out saxophone stem's ``seconds`` from where its solo starts, mono at ``rate``;
    what the trackers hear of it, its truth, and where it starts (s)."""
    truth = read_json(paths["truth"])
    start = truth["solo_intervals"][0][0] if truth["solo_intervals"] else 0.0
    x = mono(paths["stem"], rate, seconds, start)
    return x, fit.hear(x.numpy(), rate), fit.Truth.of(truth), start


def _solo_scores(solos: dict[str, tuple], method: Callable[[torch.Tensor], torch.Tensor],
                 rate: int) -> dict[str, float]:
    """How a round trip (``method``) keeps the solos: the share of their jointly voiced
    frames within 50 cents of the original's pitch (``pitch``), and their fit figures."""
    pitch, figures = [], []
    for x, original, truth, start in solos.values():
        heard = fit.hear(method(x).numpy(), rate)
        pitch.append(fit.pitch_agreement(heard, original))
        figures.append(fit.truth_scores(heard, truth, start))
    return {"pitch": float(np.mean(pitch)), **_mean(figures)}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _codebook_counts(most: int) -> list[int]:
    """1, 2, 4, ... up to and with ``most``: the bitrates to score."""
    counts = [2 ** i for i in range(int(math.log2(most)) + 1)]
    return counts + ([most] if counts[-1] != most else [])


def untrained_like(trained: Codec) -> Codec:
    """The same codec with random weights, its codebooks drawn from the latents of a demo
    song as training would start them (a first step in training mode, no gradient). Not
    from the scored tracks: codebooks drawn from the very frames they quantize would
    quantize them exactly."""
    import torchaudio.functional as AF

    torch.manual_seed(0)
    model = OwnCodec(trained.model.cfg)
    with tempfile.TemporaryDirectory() as tmp:
        make_song("codebooks", tmp, seconds=30, seed=0)
        audio, sr = read_audio(Path(tmp) / "mixture.flac")
    song = AF.resample(torch.from_numpy(audio.mean(0)), sr, trained.sample_rate)
    with torch.no_grad():
        model.train()(song[None, None].float())
    return Codec(trained.name, model.eval(), trained.codebooks)


def roundtrip(codec: Codec, x: torch.Tensor, codebooks: int) -> torch.Tensor:
    """``x`` [N] through ``codec``'s first ``codebooks``: [N]."""
    codec.codebooks = codebooks
    codes = encode(codec, [x.numpy()], codec.sample_rate, chunk_seconds=10.0, batch_size=4,
                   warmup_seconds=0.5)[0]
    return torch.from_numpy(decode(codec, codes))[:len(x)]


def opus(x: torch.Tensor, rate: int, kbps: float) -> torch.Tensor:
    """``x`` [N] at ``rate`` through ffmpeg's libopus at ``kbps`` and back: [N]."""
    with tempfile.TemporaryDirectory() as tmp:
        src, coded, back = (Path(tmp) / f for f in ("in.wav", "coded.opus", "out.wav"))
        write_audio(src, x.numpy()[None], rate, format="WAV")
        for args in ([str(src), "-c:a", "libopus", "-b:a", f"{kbps:g}k", str(coded)],
                     [str(coded), "-ar", str(rate), "-ac", "1", str(back)]):
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", *args], check=True)
        y = torch.from_numpy(read_audio(back)[0][0])
    return torch.nn.functional.pad(y, (0, max(0, len(x) - len(y))))[:len(x)]


def _summary(rows: list[dict]) -> dict:
    """The comparisons the issue's targets name: at the most codebooks, our mel distance
    over Opus's (at that bitrate or its lowest) and over the untrained codec's."""
    top = rows[-1]
    pitch = {f"pitch_{name}": top[name]["pitch"] for name in ("ours", "opus", "untrained")
             if "pitch" in top[name]}
    return {"mel_vs_opus": top["ours"]["mel"] / top["opus"]["mel"],
            "mel_vs_untrained": top["ours"]["mel"] / top["untrained"]["mel"],
            "kbps": top["kbps"], **pitch}


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("mel", "mel distance (lower is better)"),
              ("stft", "multi-resolution STFT distance"),
              ("si_sdr", "SI-SDR dB (higher is better)")]
    if "pitch" in rows[0]["ours"]:
        panels.append(("pitch", "solo frames within 50 cents"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6))
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for name in ("ours", "opus", "untrained"):
            x = [r["opus_kbps" if name == "opus" else "kbps"] for r in rows]
            ax.plot(x, [r[name][metric] for r in rows], "o-", label=name)
        ax.set(xlabel="kbps", title=label, xscale="log")
    axes[0].legend()
    write_png(path, fig)


def _examples(tracks: dict[str, torch.Tensor], ours: Codec, untrained: Codec, rate: int,
              out_dir: Path) -> list[dict]:
    """Each track as input, ours, Opus (at our bitrate) and untrained, at the most codebooks,
    and their spectrograms."""
    most = ours.model.cfg.codebooks
    kbps = max(most * ours.frame_rate * math.log2(ours.model.cfg.codebook_size) / 1000,
               OPUS_MIN_KBPS)
    examples = []
    for name, x in tracks.items():
        waves = {"input": x, "ours": roundtrip(ours, x, most), "opus": opus(x, rate, kbps),
                 "untrained": roundtrip(untrained, x, most)}
        files = {}
        for kind, wave in waves.items():
            files[kind] = f"examples/{name}_{kind}.wav"
            write_audio(out_dir / files[kind], wave.numpy()[None], rate, format="WAV")
        files["spectrogram"] = f"examples/{name}_spectrogram.png"
        write_spectrograms(out_dir / files["spectrogram"],
                           {k: w.numpy() for k, w in waves.items()}, rate)
        examples.append({"track": name, "files": files})
    return examples


def _page(path: Path, examples: list[dict], metrics: dict) -> None:
    rows = "\n".join(
        f"<tr><td>{html.escape(e['track'])}</td>" + "".join(
            f'<td><audio controls preload="none" src="{html.escape(e["files"][k])}"></audio>'
            "</td>" for k in ("input", "ours", "opus", "untrained"))
        + f'<td><img src="{html.escape(e["files"]["spectrogram"])}" alt="spectrograms"></td>'
        "</tr>" for e in examples)
    pitch = "pitch" in metrics["bitrates"][0]["ours"]
    table = "".join(f"<tr><td>{r['codebooks']}</td><td>{r['kbps']:g}</td>"
                    f"<td>{r['ours']['mel']:.3f}</td><td>{r['opus']['mel']:.3f} "
                    f"({r['opus_kbps']:g} kbps)</td><td>{r['untrained']['mel']:.3f}</td>"
                    + ("".join(f"<td>{r[n]['pitch']:.3f}</td>" for n in
                               ("ours", "opus", "untrained")) if pitch else "") + "</tr>"
                    for r in metrics["bitrates"])
    pitch_head = ("<th>pitch kept, ours</th><th>pitch kept, Opus</th>"
                  "<th>pitch kept, untrained</th>") if pitch else ""
    solos = (f"<p>Pitch kept: the share of the frames of {metrics['solos']} held-out "
             "saxophone solos where the round trip and the original both sound a pitch, "
             "within 50 cents of each other.</p>") if pitch else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>soloist: the codec</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>Our codec against Opus and against itself untrained</h1>
<p>{metrics['tracks']} held-out tracks, {metrics['seconds']:g} s each.</p>{solos}
<table><tr><th>codebooks</th><th>kbps</th><th>mel, ours</th><th>mel, Opus</th>
<th>mel, untrained</th>{pitch_head}</tr>{table}</table>
<p><img src="distances.png" alt="distances against the bitrate"></p>
<table><tr><th>track</th><th>input</th><th>ours</th><th>Opus</th><th>untrained</th>
<th>spectrograms</th></tr>
{rows}
</table></body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)


def _log_to_mlflow(codec_dir: Path, out_dir: Path, metrics: dict, mlflow_cfg: dict) -> None:
    import mlflow

    run_id = read_json(codec_dir / "train.json").get("mlflow_run_id")
    mlflow.set_tracking_uri(mlflow_cfg["tracking_uri"])
    with mlflow.start_run(run_id=run_id):
        for row in metrics["bitrates"]:  # the distances, pitch kept and fit figures
            mlflow.log_metrics({f"codec/{name}_{m}_{row['codebooks']}cb": v
                                for name in ("ours", "opus", "untrained")
                                for m, v in row[name].items()})
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluate_codec")
