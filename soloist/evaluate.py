"""Evaluation: test-set CE and accuracy, "does it listen?", generated solos and a listening page.

"Does it listen?" compares the cross-entropy of the real solos given their own backing with
the cross-entropy given another sample's backing: a model that uses the backing does worse
with the wrong one (ratio > 1). A model of latents is scored by its mean squared error
instead, the same way; a mixer (task mix) by its masks' balance and complementarity.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path

import numpy as np
import torch

from soloist import fit
from soloist.codec import decode
from soloist.condition import Vocabulary
from soloist.data import eval_loader
from soloist.device import pick_device
from soloist.generate import Sampling, generate, regress
from soloist.io import (
    PAGE_STYLE,
    RANDOM_WARNING,
    atomic_path,
    data_uri,
    read_json,
    unclipped,
    write_audio,
    write_json,
    write_spectrograms,
)
from soloist.mix import MaskMixer, mix_metrics
from soloist.model import Soloist
from soloist.weights import load_codec

log = logging.getLogger("soloist.evaluate")


@torch.no_grad()
def scores(model: Soloist, context: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
           lengths: torch.Tensor, batch_size: int, tags: torch.Tensor | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per-codebook cross-entropy and accuracy [K] over all samples (valid positions only).

    context, target [N, K, T]; mask bool [N, T]; lengths [N]; tags int64 [N, columns].
    """
    K = model.cfg.codebooks
    loss_sum, correct, count = (torch.zeros(K, device=context.device) for _ in range(3))
    for i in range(0, len(context), batch_size):
        s = slice(i, i + batch_size)
        _, _, logits = model(context[s], target[s], mask[s], lengths[s],
                             None if tags is None else tags[s])
        delayed = model.pattern.build(target[s], lengths[s])[..., 1:]
        valid = model.pattern.valid_mask(target.shape[-1], lengths[s])[..., 1:]
        labels = delayed.clamp(max=model.cfg.card - 1)
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 2), labels.flatten(),
                                               reduction="none").view(valid.shape)
        loss_sum += (ce * valid).sum((0, 2))
        correct += ((logits.argmax(-1) == delayed) & valid).sum((0, 2))
        count += valid.sum((0, 2))
    return (loss_sum / count).cpu().numpy(), (correct / count).cpu().numpy()


@torch.no_grad()
def mse(model: Soloist, context: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
        lengths: torch.Tensor, batch_size: int, tags: torch.Tensor | None = None) -> float:
    """A ``LatentSoloist``'s mean squared error over all samples' real frames (arguments as
    for ``scores``, with latents [N, D, T])."""
    total, count = 0.0, 0
    for i in range(0, len(context), batch_size):
        s = slice(i, i + batch_size)
        loss, _, _ = model(context[s], target[s], mask[s], lengths[s],
                           None if tags is None else tags[s])
        total += float(loss) * int(lengths[s].sum())
        count += int(lengths[s].sum())
    return total / max(count, 1)


def _test_loss(model: Soloist, data: tuple, tags: torch.Tensor | None) -> float:
    """The test loss of (context, target, mask, lengths): the mean cross-entropy over
    codebooks, or a model of latents' mean squared error."""
    if model.cfg.latents:
        return mse(model, *data, 16, tags)
    return float(scores(model, *data, 16, tags)[0].mean())


def evaluate(model_dir: str | os.PathLike, shards: str | os.PathLike,
             codec_weights: str | os.PathLike, out_dir: str | os.PathLike, config: dict,
             truths: dict[str, str | os.PathLike] | None = None) -> dict:
    """Score the test split, generate ``examples`` solos, write metrics.json and index.html.

    ``config`` is the whole workflow config (``evaluate``, ``tokenize`` and ``mlflow`` used).
    ``truths``: the ``truth.json`` of each demo song of the sheet, by its row: a solo's fit
    is then measured against the truth too (``soloist.fit``). Everything is also logged
    into the training's MLflow run.
    """
    cfg, model_dir, shards, out_dir = config["evaluate"], Path(model_dir), Path(shards), \
        Path(out_dir)
    torch.manual_seed(cfg["seed"])
    device = pick_device(cfg["device"])
    model = Soloist.from_pretrained(model_dir, device)
    frames = _frames(cfg["seconds"], model)
    urls = [str(p) for p in sorted((shards / "test").glob("*.tar"))]
    if not urls:
        raise RuntimeError(f"no test shards in {shards / 'test'}: give some tracks split=test")
    batches = [b for _, b in zip(range(cfg["batches"]),
                                 eval_loader(urls, batch_size=16, frames=frames,
                                             pad=model.cfg.card), strict=False)]
    context, target, mask, lengths = (torch.cat([b[k] for b in batches]).to(device) for k in
                                      ("context", "target", "context_mask", "lengths"))
    keys = [k for b in batches for k in b["keys"]]
    metas = [m for b in batches for m in b["meta"]]
    n = len(keys)
    vocab = Vocabulary.of(model.info)
    tags = None if vocab is None else \
        vocab.tensor([t for b in batches for t in b["tags"]]).to(device)
    data = (context, target, mask, lengths)
    metrics = {"samples": n, **_scored(model, data, tags, vocab),
               "weights": model.info["weights"]}
    if model.info["weights"] == "random":
        metrics["warning"] = RANDOM_WARNING
    task = model.info.get("task", "solo")

    codec = load_codec(codec_weights, model.info["codec"]["codebooks"], device,
                       latents=bool(model.cfg.latents))
    sampling = Sampling(cfg["temperature"], cfg["top_k"], cfg["top_p"], cfg["cfg_scale"])
    examples, heard = [], []
    for j, i in enumerate(_spread(metas, cfg["examples"])):
        generated = _generated(model, data, tags, i, frames, sampling, cfg["seed"] + j)
        example, audio = _write_example(out_dir / "examples", j, keys[i], codec,
                                        context[i, :, :lengths[i]], target[i, :, :lengths[i]],
                                        generated, task)
        examples.append(example)
        heard.append((metas[i], audio))
    if task == "solo" and examples:
        metrics["fit"] = _fit(heard, examples, codec.sample_rate, truths or {}, str(device))
    _write_page(out_dir / "index.html", examples, metrics, task)
    _write_page(out_dir / "listen.html", examples, metrics, task, embed=True)
    write_json(out_dir / "metrics.json", metrics)
    _log_to_mlflow(model_dir, out_dir, metrics, config["mlflow"])
    return metrics


def _scored(model: Soloist, data: tuple, tags: torch.Tensor | None,
            vocab: Vocabulary | None) -> dict:
    """The test metrics of a model of codes or of latents (and "does it listen?"), and of
    its tags; or a mixer's."""
    if isinstance(model, MaskMixer):
        return mix_metrics(model, data)
    # Another sample's backing: the set rotated by half its length, so no sample keeps its
    # own and, samples being in track order, most get another track's. A rotation by one
    # would pair most windows with the next window of their own track: 75% the same audio.
    n = len(data[0])
    other = torch.roll(torch.arange(n), n // 2) if n > 1 else torch.arange(n)
    metrics = (_latent_scores if model.cfg.latents else _code_scores)(model, data, tags, other)
    if vocab is not None:
        metrics |= _tag_scores(model, vocab, data, tags, other, metrics)
    return metrics


def _spread(metas: list[dict], count: int) -> list[int]:
    """``count`` samples taken in turn from each track (the first window of each, then the
    second...), so that the examples hear as many songs as there are."""
    by_track: dict[str, list[int]] = {}
    for i, meta in enumerate(metas):
        by_track.setdefault(meta.get("row", ""), []).append(i)
    order = [track[rank] for rank in range(max(map(len, by_track.values()), default=0))
             for track in by_track.values() if rank < len(track)]
    return order[:count]


def _fit(heard: list[tuple[dict, dict]], examples: list[dict], rate: int,
         truths: dict[str, str | os.PathLike], device: str = "cpu") -> dict:
    """Each example's fit figures (``soloist.fit.example_fit``), written into its entry,
    and their means over the examples. The floors' other song is the next example from
    another track (else the next example)."""
    solos = [(meta.get("row", ""), {name: fit.hear(audio[name], rate, device)
                                    for name in ("real", "generated")})
             for meta, audio in heard]
    for i, (example, (meta, audio)) in enumerate(zip(examples, heard, strict=True)):
        row, solo = solos[i]
        turn = solos[i + 1:] + solos[:i] or [solos[i]]
        other = next((s for r, s in turn if r != row), turn[0][1])["real"]
        truth = read_json(truths[row]) if row in truths else None
        start = meta.get("frame_start", 0) / meta.get("frame_rate", 1)  # s into its song
        example["fit"] = fit.example_fit(solo["generated"], solo["real"], other,
                                         audio["backing"], rate, truth, start)
    figures = [e["fit"] for e in examples]
    known = [f for f in figures if "truth" in f]
    out = {"examples": len(examples), "with_truth": len(known),
           "free": fit.summary([f["free"] for f in figures]),
           "per_example": [{"key": e["key"], **e["fit"]} for e in examples]}
    if known:
        out["truth"] = fit.summary([f["truth"] for f in known])
        out["estimators"] = {k: float(np.mean([f["estimate"][k] for f in known]))
                             for k in ("key_score", "beat_f")}
    return out


def _generated(model: Soloist, data: tuple, tags: torch.Tensor | None, i: int, frames: int,
               sampling: Sampling, seed: int) -> torch.Tensor:
    """Sample i's generated target [K, frames] (latents: [D, frames]) from its context: a
    solo, a continuation, or its mix with its own target."""
    context, target, mask = (x[i:i + 1, ..., :frames] for x in data[:3])
    tag = None if tags is None else tags[i:i + 1]
    if isinstance(model, MaskMixer):
        return model.mix(context, target, mask)[0]
    if model.cfg.latents:
        return regress(model, context, frames, mask, sampling, tag)[0]
    return generate(model, context, frames, mask, sampling, seed=seed, tags=tag)[0]


def _code_scores(model: Soloist, data: tuple, tags: torch.Tensor | None,
                 other: torch.Tensor) -> dict:
    """Test CE and accuracy, overall and per codebook, and "does it listen?": the CE with
    ``other`` samples' backings over the CE with their own."""
    context, target, mask, lengths = data
    ce, acc = scores(model, *data, 16, tags)
    ce_shuffled, _ = scores(model, context[other], target, mask[other], lengths, 16, tags)
    log.info("test CE %.4f (shuffled backing %.4f, ratio %.3f), accuracy %.3f", ce.mean(),
             ce_shuffled.mean(), ce_shuffled.mean() / ce.mean(), acc.mean())
    return {"ce": float(ce.mean()), "accuracy": float(acc.mean()),
            "ce_shuffled_backing": float(ce_shuffled.mean()),
            "listen_ratio": float(ce_shuffled.mean() / ce.mean()),
            **{f"ce_cb{k}": float(v) for k, v in enumerate(ce)},
            **{f"accuracy_cb{k}": float(v) for k, v in enumerate(acc)}}


def _latent_scores(model: Soloist, data: tuple, tags: torch.Tensor | None,
                   other: torch.Tensor) -> dict:
    """Test MSE of a model of latents, and "does it listen?" by its MSE."""
    context, target, mask, lengths = data
    error = mse(model, *data, 16, tags)
    shuffled = mse(model, context[other], target, mask[other], lengths, 16, tags)
    log.info("test MSE %.4f (shuffled backing %.4f, ratio %.3f)", error, shuffled,
             shuffled / error)
    return {"mse": error, "mse_shuffled_backing": shuffled, "listen_ratio": shuffled / error}


def _tag_scores(model: Soloist, vocab: Vocabulary, data: tuple, tags: torch.Tensor,
                other: torch.Tensor, metrics: dict) -> dict:
    """Does it follow its tags? The test loss (CE, or MSE for latents) with another sample's
    tags (all columns, then each column alone) over that with its own: above 1 when the
    tags matter."""
    measure = "mse" if model.cfg.latents else "ce"
    own, shuffled = metrics[measure], _test_loss(model, data, tags[other])
    out = {f"{measure}_shuffled_tags": shuffled, "tags_ratio": shuffled / own}
    for c, column in enumerate(vocab.columns):
        one = tags.clone()
        one[:, c] = tags[other, c]
        out[f"tags_ratio_{column}"] = _test_loss(model, data, one) / own
    log.info("test %s with shuffled tags %.4f (ratio %.3f)", measure.upper(), shuffled,
             out["tags_ratio"])
    return out


def _frames(seconds: float | None, model: Soloist) -> int:
    """The frames of each scored and generated window: ``seconds`` of them, at most the
    model's window (None: all of it)."""
    window = model.cfg.max_frames
    if seconds is None:
        return window
    frames = round(seconds * model.info["codec"]["frame_rate"])
    if frames > window:
        log.warning("evaluate.seconds (%g) is longer than the model's window: evaluating "
                    "its %g s (train.seconds)", seconds, model.info["window_seconds"])
    return min(frames, window)


def _write_example(folder: Path, i: int, key: str, codec: torch.nn.Module,
                   context: torch.Tensor, target: torch.Tensor, generated: torch.Tensor,
                   task: str = "solo") -> tuple[dict, dict[str, np.ndarray]]:
    """An example's audio: the context, the real and generated target, and both together
    (played at once; a continuation after its context; for a mix, A and B at once). Returns
    its entry and its decoded audio (mono, at the codec's rate) by name."""
    folder.mkdir(parents=True, exist_ok=True)
    rate = codec.sample_rate
    audio = {"backing": decode(codec, context), "real": decode(codec, target),
             "generated": decode(codec, generated)}
    second = audio["real" if task == "mix" else "generated"]
    n = min(len(audio["backing"]), len(second))
    audio["mix"] = np.concatenate([audio["backing"], second]) if task == "continuation" \
        else audio["backing"][:n] + second[:n]
    files = {}
    for name, wave in audio.items():
        files[name] = f"{i:02d}_{name}.wav"
        write_audio(folder / files[name], unclipped(wave[None]), rate,
                    format="WAV")
    files["spectrogram"] = f"{i:02d}_spectrogram.png"
    _, (_, real_label, generated_label, _) = WORDS[task]
    write_spectrograms(folder / files["spectrogram"],
                       {real_label: audio["real"], generated_label: audio["generated"]}, rate)
    return {"key": key, "files": {k: f"examples/{v}" for k, v in files.items()}}, audio


# The listening page's words per task: its title, and its columns' (the context, the real
# and the generated target, both)
WORDS = {"solo": ("Generated solos", ("backing", "real solo", "generated solo",
                                      "backing + generated")),
         "continuation": ("Generated continuations", (
             "previous segment", "real continuation", "generated continuation",
             "previous, then generated")),
         "mix": ("Mixed through complementary masks", ("A", "B", "masked mix",
                                                        "A and B at once"))}


def _write_page(path: Path, examples: list[dict], metrics: dict, task: str = "solo",
                embed: bool = False) -> None:
    """A listening page: backing, real and generated solo and the mix, side by side (for a
    continuation: the segment before, the real and generated next one, and both in turn;
    for a mix: A, B, their masked mix and both at once). With ``embed`` the audio and
    images are inside the page (a page the report can hold)."""
    title, columns = WORDS[task]
    warning = (f'<p class="warning">{html.escape(metrics["warning"])}</p>'
               if "warning" in metrics else "")

    def src(file: str, mime: str) -> str:
        return data_uri(path.parent / file, mime) if embed else html.escape(file)

    rows = []
    for ex in examples:
        f = ex["files"]
        cells = "".join(f'<td><audio controls preload="auto" src="{src(f[k], "audio/wav")}">'
                        "</audio></td>" for k in ("backing", "real", "generated", "mix"))
        rows.append(f"<tr><td>{html.escape(ex['key'])}{_fit_cell(ex.get('fit'))}</td>"
                    f"{cells}<td><img "
                    f"src=\"{src(f['spectrogram'], 'image/png')}\" alt=\"spectrogram\"></td></tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>soloist: {title.lower()}</title>
<style>{PAGE_STYLE}</style>
</head><body>
<h1>{title}</h1>{warning}
<p>{_scores_line(metrics, columns[0])}{_tags_line(metrics)}</p>
{_fit_table(metrics.get("fit"))}
<table><tr><th>sample</th>{"".join(f"<th>{c}</th>" for c in columns)}<th>spectrograms</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)


FIT_WORDS = {"generated": "generated solo", "real": "real solo (ceiling)",
             "tritone": "real, a tritone up", "half_beat": "real, half a beat late",
             "other_song": "another song's solo"}


def _fit_table(summary: dict | None) -> str:
    """The fit figures' means over the examples, the generated solo beside its controls."""
    if not summary:
        return ""
    groups = [g for g in ("truth", "free") if g in summary]
    figures = [(g, f) for g in groups for f in summary[g]["generated"]]
    head = "".join(f"<th>{f.replace('_', ' ')}</th>" for _, f in figures)
    rows = "".join(
        f"<tr><td>{FIT_WORDS[name]}</td>"
        + "".join(f"<td>{summary[g][name][f]:.2f}</td>" for g, f in figures) + "</tr>"
        for name in FIT_WORDS if name in summary[groups[0]])
    estimators = summary.get("estimators")
    agreement = (f" The backing's key and beats, estimated without the truth (for in key and "
                 f"on beat), scored {estimators['key_score']:.2f} (mir_eval's key score) and "
                 f"beat F {estimators['beat_f']:.2f} against it." if estimators else "")
    return (f"<h2>Does it fit the backing?</h2><p>Over {summary['examples']} examples "
            f"({summary['with_truth']} with the demo's truth: in scale, chord tones, on grid, "
            f"with band). The real solo is the ceiling, the three below it are floors: a "
            f"figure means something between them.{agreement}</p>"
            f"<table><tr><th>solo</th>{head}</tr>{rows}</table>")


def _fit_cell(figures: dict | None) -> str:
    """An example's fit, generated against real, under its name."""
    if not figures:
        return ""
    group = figures.get("truth") or figures["free"]
    return "<br><small>" + "<br>".join(
        f"{f.replace('_', ' ')} {v:.2f} (real {group['real'][f]:.2f})"
        for f, v in group["generated"].items()) + "</small>"


def _scores_line(metrics: dict, context: str) -> str:
    """What the page says of the test loss (CE, or MSE for latents) and "does it listen?",
    or of a mixer's masks."""
    if "complementarity" in metrics:
        return (f"Test loss {metrics['loss']:.3f} over {metrics['samples']} samples: "
                f"balance {metrics['balance']:.3f} (the share of the mix's energy from A), "
                f"complementarity {metrics['complementarity']:.3f} (the share from exactly "
                f"one side; an even mix of the same segments: "
                f"{metrics['complementarity_even']:.3f}).")
    measure = "mse" if "mse" in metrics else "ce"
    accuracy = f"; accuracy {metrics['accuracy']:.3f}" if "accuracy" in metrics else ""
    return (f"Test {measure.upper()} {metrics[measure]:.3f} with the real {context}, "
            f"{metrics[f'{measure}_shuffled_backing']:.3f} with another sample's (ratio "
            f"{metrics['listen_ratio']:.3f}){accuracy} over {metrics['samples']} samples.")


def _tags_line(metrics: dict) -> str:
    """What the page says of the tags, for a model conditioned on them."""
    if "tags_ratio" not in metrics:
        return ""
    measure = "mse" if "mse" in metrics else "ce"
    columns = ", ".join(f"{k.removeprefix('tags_ratio_')} {v:.3f}" for k, v in metrics.items()
                        if k.startswith("tags_ratio_"))
    return (f" With another sample's tags, test {measure.upper()} "
            f"{metrics[f'{measure}_shuffled_tags']:.3f} (ratio {metrics['tags_ratio']:.3f}; "
            f"one column at a time: {columns}).")


def _fit_metrics(summary: dict) -> dict[str, float]:
    """The fit means as MLflow metrics: ``fit/<truth|free>/<solo>/<figure>``."""
    return {f"fit/{group}/{name}/{figure}": value
            for group in ("truth", "free") for name, figures in summary.get(group, {}).items()
            for figure, value in figures.items()}


def _log_to_mlflow(model_dir: Path, out_dir: Path, metrics: dict, mlflow_cfg: dict) -> None:
    import mlflow

    summary = model_dir / "train.json"
    run_id = read_json(summary).get("mlflow_run_id")
    if not run_id:
        log.warning("no MLflow run id in %s: metrics not logged to MLflow", summary)
        return
    mlflow.set_tracking_uri(mlflow_cfg["tracking_uri"])
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test/{k}": v for k, v in metrics.items()
                            if isinstance(v, float)} | _fit_metrics(metrics.get("fit", {})))
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluate")

