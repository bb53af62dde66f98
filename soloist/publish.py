"""Publish: the trained model as a model folder with its card, and on the Hugging Face Hub.

``results/publish/`` holds what ``Soloist.from_pretrained`` and ``soloist accompany --model``
read (``model.safetensors``, ``config.json``), a ``README.md`` model card with the Hub's front
matter, and example WAVs. With ``publish.repo_id`` set, ``huggingface_hub`` uploads it; a
missing token is an error before any work.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import yaml

from soloist.io import atomic_path, read_json
from soloist.model import Soloist
from soloist.tracks import Batch
from soloist.weights import codec_licence

log = logging.getLogger("soloist.publish")

# What a model trained on a codec's tokens inherits from the licence of its weights
INHERITED = {"cc-by-nc-4.0": "whose pretrained weights are CC-BY-NC 4.0, so this model is for "
                             "non-commercial use",
             "mit": "whose pretrained weights are MIT, so the codec puts no limit on its use",
             "yours": "a codec soloist trained on your recordings, so the codec puts no "
                      "limit on its use"}


# What a card says per task: what the model is, its Hub tags, how its evaluation reads
# ({measure}: the test loss), and what its examples are
CARD_WORDS = {
    "solo": ("An encoder-decoder transformer", ["accompaniment", "saxophone"],
             "\"Does it listen?\" is the {measure} of the real solos given another track's "
             "backing over\nthat given their own: above 1 when the model uses the backing.",
             "generated solos on test backings, alone and mixed"),
    "continuation": ("An encoder-decoder transformer", ["continuation"],
                     "\"Does it listen?\" is the {measure} of the real next segments given "
                     "another track's previous segment over that given\ntheir own: above 1 "
                     "when the model uses the segment before.",
                     "continuations of test recordings, alone and after what they continue"),
    "mix": ("A transformer mask generator", ["mixing"],
            "`balance` is the share of a mix's energy from A (0.5: even), `complementarity`\n"
            "the share from exactly one side (1: every latent element from one side alone);\n"
            "`complementarity_even` is an even mix's of the same segments.",
            "test segments A and B, their masked mix, and both at once"),
}


class PublishError(RuntimeError):
    """Publishing cannot start; the message says what to set."""


def hub_token(repo_id: str | None) -> str | None:
    """The Hugging Face token for an upload to ``repo_id`` (None: no upload asked)."""
    if repo_id is None:
        return None
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PublishError(
            f"publish.repo_id is {repo_id!r} but there is no Hugging Face token: export "
            "HF_TOKEN=hf_... (a token that may write to that repo) or run `hf auth login`; "
            "or set publish.repo_id: null to write results/publish/ only")
    return token


def publish(model_dir: str | os.PathLike, metrics: str | os.PathLike,
            examples: str | os.PathLike, stats: str | os.PathLike,
            ingest_records: list[str | os.PathLike], out_dir: str | os.PathLike,
            settings: dict) -> Path:
    """Write the model folder ``out_dir`` from a training's ``model_dir``, evaluate's
    ``metrics`` and ``examples`` folder, shard's ``stats`` and ingest's info folders (for
    the sources' licences); upload it when ``settings["repo_id"]`` is set."""
    token = hub_token(settings["repo_id"])  # before any work
    out_dir = Path(out_dir)
    model = Soloist.from_pretrained(model_dir)  # a folder that loads, or a clear error
    model.save_pretrained(out_dir)
    files = _examples(Path(examples), out_dir / "examples", settings["examples"])
    card = model_card(model, read_json(metrics), read_json(stats), _sources(ingest_records),
                      files, settings["repo_id"])
    with atomic_path(out_dir / "README.md") as tmp:
        tmp.write_text(card)
    if token:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(settings["repo_id"], private=settings["private"], exist_ok=True)
        commit = api.upload_folder(repo_id=settings["repo_id"], folder_path=out_dir,
                                   commit_message="soloist publish")
        log.info("uploaded %s to %s", out_dir, commit)
    return out_dir


def _examples(folder: Path, out: Path, n: int) -> list[str]:
    """The first ``n`` of evaluate's examples (generated solo, and its mix with the backing)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    names = []
    for i in range(n):
        for part in ("generated", "mix"):
            source = folder / f"{i:02d}_{part}.wav"
            if source.is_file():
                shutil.copyfile(source, out / source.name)
                names.append(f"examples/{source.name}")
    return names


def _sources(ingest_records: list[str | os.PathLike]) -> Counter:
    """How many ingested tracks came with which (kind, licence)."""
    counts: Counter = Counter()
    for record in ingest_records:
        batch = Batch.of("ingest", record)
        for track in batch.tracks():
            info = read_json(batch.files(track)["status"])
            if info.get("ok"):
                counts[info["kind"], info.get("license") or ""] += 1
    return counts


KIND_NAMES = {"demo": "synthesized by soloist's demo corpus", "url": "downloaded with yt-dlp",
              "file": "local audio files", "stems": "local multitracks (stems)"}


def _card_tables(info: dict, metrics: dict, sources: Counter) -> tuple[str, str, str]:
    """The model card's splits table, list of sources and table of test scores."""
    splits = "\n".join(f"| {split} | {s['tracks']} | {s['windows']} | {s['hours']:.3f} |"
                       for split, s in info["data"]["splits"].items())
    kinds = "\n".join(
        f"- {n} {'track' if n == 1 else 'tracks'} {KIND_NAMES.get(kind, kind)}: licence "
        f"{licence_of or ('none (synthesized)' if kind == 'demo' else 'not known')}"
        for (kind, licence_of), n in sorted(sources.items()))
    scores = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items()
                       if isinstance(v, float) and not k.startswith(("ce_cb", "accuracy_cb")))
    return splits, kinds, scores + _fit_rows(metrics.get("fit"))


def _fit_rows(fit: dict | None) -> str:
    """The fit figures' rows of the card's score table: the generated solo's, with the real
    solo's (the ceiling) and the best of its floors' beside it."""
    if not fit:
        return ""
    rows = []
    for group in ("truth", "free"):
        solos = fit.get(group, {})
        for figure, value in solos.get("generated", {}).items():
            floor = max(solos[name][figure] for name in ("tritone", "half_beat", "other_song"))
            rows.append(f"\n| fit: {figure} (real solo {solos['real'][figure]:.4f}, best "
                        f"floor {floor:.4f}) | {value:.4f} |")
    return "".join(rows)


def _condition_line(info: dict) -> str:
    """The card's word on a model's tags (condition.columns), if it has any."""
    if "condition" not in info:
        return ""
    columns = ", ".join(info["condition"]["columns"])
    return (f", `condition` (its tag columns, {columns}, and their values: give them with "
            "`--tag COLUMN=VALUE`)")


def _codec_licence(name: str) -> tuple[str, str]:
    """(the Hub's licence id, what a model trained on the tokens of codec ``name`` inherits)."""
    licence = codec_licence(name)
    return ("other" if licence == "yours" else licence,
            INHERITED.get(licence, "see the codec's licence"))


def model_card(model: Soloist, metrics: dict, stats: dict, sources: Counter,
               examples: list[str], repo_id: str | None) -> str:
    """The README.md of a model folder: Hub front matter, then what a user needs to know."""
    info = model.info
    codec = info["codec"]
    licence, why = _codec_licence(codec["model"])
    random = info["weights"] == "random"
    task = info.get("task", "solo")
    what, tags, scored, examples_are = CARD_WORDS[task]
    front = {"license": licence, "library_name": "soloist", "pipeline_tag": "audio-to-audio",
             "tags": ["music", *tags, "soloist", codec["model"]]
             + (["random-weights"] if random else [])}
    warning = f"\n> **{info['warning']}**\n" if random else ""
    splits, kinds, scores = _card_tables(info, metrics, sources)
    listening = "\n".join(f"- [{e}]({e})" for e in examples) or "- (none)"
    loss = info["training"].get("best_val_loss")
    validation = "no validation split" if loss is None else f"validation loss {loss:.4f}"
    title, about = ABOUT[task](info, repo_id or "results/publish")
    separator = "" if task != "solo" else (
        " The separator, Demucs, is MIT code;\nits pretrained weights are \"provided only for "
        "scientific purposes\".")
    scored = scored.format(measure="mean squared error" if model.cfg.latents
                           else "cross-entropy")
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# soloist: {title}
{warning}
{what} ({model.num_params() / 1e6:.1f}M parameters, preset
`{info['training']['preset']}`) trained with soloist{about}
## Training data

{info['data']['tracks']} tracks, step {info['training']['step']} (checkpoint
`{info['training']['checkpoint']}`, {validation}).

| split | tracks | windows | hours of audio |
| --- | --- | --- | --- |
{splits}

Sources:
{kinds}

## Evaluation (test split)

{scored}

| metric | value |
| --- | --- |
{scores}

## Licence

`{licence}`: trained on {codec['model']} tokens, {why}.{separator} The recordings it learned
from keep their own licences (above).

## Examples

{listening}

## Files

- `model.safetensors`: the weights (safetensors: no pickle on load)
- `config.json`: `model` (the architecture), `task`, `codec` (whose tokens it reads, and the
  sha256 of those weights), `separator` (the roles; none but for task solo),
  `window_seconds`, `training`, `data`{_condition_line(info)}
- `examples/`: {examples_are}
"""


def _solo_about(info: dict, where: str) -> tuple[str, str]:
    """The card's title, and what a solo model does and how to play along with it."""
    codec = info["codec"]
    return "a saxophone soloist that plays along", f""": the encoder
reads a backing track's {codec['model']} tokens ({codec['codebooks']} codebooks of
{codec['cardinality']} at {codec['frame_rate']:g} Hz), the decoder writes a solo's tokens
under MusicGen's delay pattern, {info['window_seconds']:g} s at a time. The backing is what
{info['separator']['model']} separates as {', '.join(info['separator']['context'])}; the solo
is {', '.join(info['separator']['target'])}.

## Play along

```bash
soloist accompany my_backing.mp3 --model {where} -o out   # a file, URL, stems folder or demo:<name>
```

`out/my_backing/solo.wav` is a solo over the whole backing (any length: windows of
{info['window_seconds']:g} s, each primed with the last seconds of the one before),
`mix.wav` the two together, `out/index.html` a page to listen to them. In Python:
`Soloist.from_pretrained("{where}")` (`from soloist import Soloist`).
"""


def _continuation_about(info: dict, where: str) -> tuple[str, str]:
    """The card's title, and what a continuation model does and how to extend a recording."""
    codec = info["codec"]
    tokens = (f"""latents ({codec['model']}'s encoder frames before quantization,
{codec['latents']} channels at {codec['frame_rate']:g} Hz), the decoder regresses the next
segment's latents frame by frame (mean squared error) for the codec's decoder to play,""")\
        if codec.get("latents") else (f"""{codec['model']} tokens
({codec['codebooks']} codebooks of {codec['cardinality']} at {codec['frame_rate']:g} Hz),
the decoder writes the next segment's tokens under MusicGen's delay pattern,""")
    return "music continuation", f""" on pairs of consecutive segments of
whole recordings: the encoder reads a segment's {tokens}
{info['window_seconds']:g} s at a time.

## Continue a recording

```bash
soloist continue my_recording.mp3 --model {where} -o out --seconds 10   # a file, URL or demo:<name>
```

`out/my_recording/continuation.wav` is the new audio, `extended.wav` the recording followed
by it (any length: a window at a time, each continuing the last). In Python:
`Soloist.from_pretrained("{where}")` (`from soloist import Soloist`).
"""


def _mix_about(info: dict, where: str) -> tuple[str, str]:
    """The card's title, and what a mixer does."""
    codec = info["codec"]
    return "mixing through complementary masks", f""" on pairs of consecutive segments of
whole recordings: it reads the {codec['model']} encoder's latents of two segments A and B
({codec['latents']} channels at {codec['frame_rate']:g} Hz, {info['window_seconds']:g} s),
A's frames attending to B's, and gives A a mask m per frame and channel and B the mask
1 - m; the mix m A + (1 - m) B plays through the codec's decoder. Its losses: the mix as
loud as each side, half its energy from each, each element from one side alone, and a
critic of real segments (weights: `mix` in config.json's `model`). In Python:
`Soloist.from_pretrained("{where}")` loads it (`from soloist import Soloist`);
`model.mix(a, b)` mixes latents [B, D, T].
"""


ABOUT = {"solo": _solo_about, "continuation": _continuation_about, "mix": _mix_about}
