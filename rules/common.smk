import functools
import os
import subprocess
import sys
from pathlib import Path

from soloist.config import (batch_of, read_tracks, row_of, validate_config, wants_latents,
                            write_sheet)
from soloist.synth import STEMS
from soloist.fetch_weights import weights_mode
from soloist.weights import codec_manifest, is_own, resolve_codec
from soloist.launch import resources as train_resources
from soloist.tracks import LAYOUT, split_of

# Scripts import soloist from this checkout, also inside --sdm conda environments.
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, (workflow.basedir, os.getenv("PYTHONPATH")))))

validate_config(config)
ROWS = read_tracks(config["tracks"], condition=config["condition"]["columns"])
ACCOMPANY_ROWS = read_tracks(config["accompany"]["tracks"], "accompany.tracks")
# a sheet of the codec's own (codec.tracks), or None: train_codec takes the training tracks
CODEC_ROWS = config["codec"]["tracks"] and read_tracks(config["codec"]["tracks"], "codec.tracks")


AUTO_WEIGHTS = "SOLOIST_WEIGHTS_AUTO"  # what weights: auto came to, for the run's jobs


def resolve_weights():
    """pretrained | random. ``auto`` is decided once, by the Snakemake the user started: its
    jobs (local or sbatch'ed, which inherit its environment) read the answer, so that a
    compute node without internet never decides otherwise."""
    if config["weights"] != "auto":
        return config["weights"]
    if not os.environ.get(AUTO_WEIGHTS):
        models = {"demucs": config["separate"]["model"]}
        codec = resolve_codec(config["tokenize"]["model"], "pretrained")
        if not is_own(codec):  # our own codecs are trained or shipped, not fetched
            models["codec"] = codec
        demo_only = all(row.kind == "demo" for row in ROWS.values())
        mode, why = weights_mode("auto", models, "resources/weights", demo_only)
        print(why, file=sys.stderr)
        os.environ.update({AUTO_WEIGHTS: mode})
    return os.environ.get(AUTO_WEIGHTS)


WEIGHTS = resolve_weights()
# tokenize.model: auto, decided here once, so that every rule's params name the codec used
config["tokenize"]["model"] = resolve_codec(config["tokenize"]["model"], WEIGHTS)
# Random Demucs makes noise of a demo song's "solo"; its true stems tell the truth.
DEMO_STEMS = config["demo"]["stems"] is True or (
    config["demo"]["stems"] == "auto" and WEIGHTS == "random"
)
# Random-init models made the outputs: a random codec, or random Demucs separating
RANDOM_OUTPUTS = WEIGHTS == "random" and not (is_own(config["tokenize"]["model"]) and DEMO_STEMS)


wildcard_constraints:
    row=r"[A-Za-z0-9._-]+",
    batch=r"b[0-9]+",
    name=r"[A-Za-z0-9._-]+",


# Settings that cannot change a rule's outputs (where and how fast it runs, where downloads
# are cached): kept out of its params, which Snakemake compares to rerun a rule.
SPEED = {
    "ingest": {"downloads"},
    "ytdlp": {"retries", "socket_timeout", "rate_limit"},
    "separate": {"batch_size", "compile", "device", "threads", "gpus"},
    "augment": {"device", "threads", "gpus"},
    "tokenize": {"batch_size", "compile", "device", "threads", "gpus"},
    # gpus and nodes stay: they set the global batch
    "train": {"device", "compile", "checkpoint_every"},
    "evaluate": {"device"},
    # gpus stays: it sets the global batch
    "codec": {"device", "checkpoint_every", "log_every", "workers"},
    "accompany": {"batch_size", "compile", "device", "threads", "gpus"},
    # clip reads the task section for the segments' length: which task reads the segments
    # (solo aside, which changes clip's inputs) and what it outputs (tokenize_settings) do
    # not change them
    "task": {"name", "output"},
}


def settings(section):
    """``config[section]`` as a rule's params, which Snakemake compares to decide reruns:
    without its SPEED keys, and with its keys sorted (Snakemake compares their repr, so a
    reordered config file would rerun every rule). Scripts read the whole section from
    ``snakemake.config``."""
    return _outputs_depend_on(section, config[section])


def _outputs_depend_on(name, value):
    if not isinstance(value, dict):
        return value
    return {k: _outputs_depend_on(k, v) for k, v in sorted(value.items())
            if k not in SPEED.get(name, ())}


def tokenize_settings():
    """tokenize's settings, and whether it writes latents (task.output) instead of codes."""
    return settings("tokenize") | ({"latents": True} if wants_latents(config) else {})


def condition_tags():
    """The tag columns and the sheet's tags of each row in them (shard's params: a column
    the model is not conditioned on changes nothing)."""
    return {"columns": config["condition"]["columns"],
            "rows": {r.track: row_tags(r) for r in ROWS.values()}}


def row_tags(row):
    """A sheet row's tags in the columns the model is conditioned on (condition.columns)."""
    return {c: row.tags[c] for c in config["condition"]["columns"] if row.tags.get(c)}


def weights_manifest(family):
    name = config["separate"]["model"] if family == "demucs" else config["tokenize"]["model"]
    return str(codec_manifest(name) or f"resources/weights/{WEIGHTS}/{family}/{name}.json")


def record(stage, batch="{batch}"):
    """A batch job's declared output: its record, listing its tracks (soloist/tracks.py)."""
    return f"results/{stage}/{batch}.json"


def audio_folder(stage, batch="{batch}"):
    """The folder holding a batch's audio, where tracks.LAYOUT puts it."""
    top = LAYOUT[stage]["audio" if stage == "ingest" else "context"].split("/")[0]
    return os.path.join(f"results/{stage}/{batch}", "" if "{track}" in top else top).rstrip("/")


def intermediate(name, path):
    """``{name: temp(directory(path))}`` when keep_intermediates is false, so that Snakemake
    deletes the audio once its consumers ran (and a rerun redoes every track of the batch);
    else ``{}``: the files stay, undeclared, so that reruns keep the tracks that did not
    change (Snakemake deletes a job's declared outputs before it runs it)."""
    return {} if config["keep_intermediates"] else {name: temp(directory(path))}


def kept_audio(name, path):
    """The input a consumer of ``intermediate`` audio declares (temp waits for it)."""
    return {} if config["keep_intermediates"] else {name: path}


VARIANTS = bool(config["augment"]["variants"])  # pitch/tempo variants of the tracks
# continuation and mix: recordings whole, pairs of consecutive segments; solo: backing -> solo
WHOLE = config["task"]["name"] != "solo"
# What each per-track stage's tracks are made from, besides its own settings.
UPSTREAM = {"ingest": [], "separate": ["ingest"], "augment": ["ingest", "separate"],
            "clip": ["ingest", "separate"] + ["augment"] * VARIANTS,
            "tokenize": ["ingest", "separate"] + ["augment"] * VARIANTS}
if WHOLE:  # no separation: clip and tokenize read the ingested recordings
    UPSTREAM |= {"clip": ["ingest", "task"], "tokenize": ["ingest"]}


def shaped_by(stage):
    """A batch job's params beyond its own settings: its tracks and the upstream settings.
    Snakemake compares params with the last successful run's, so a job whose upstream
    changed is rerun even when that upstream job was killed before it wrote its record
    (a missing upstream output alone makes Snakemake rerun nothing that looks up to date)."""
    return lambda wc: {"tracks": batch_tracks(wc), **{s: settings(s) for s in UPSTREAM[stage]}}


def all_tracks():
    """Track ids after playlist expansion (URL rows resolve through the resolve checkpoint)."""
    tracks = []
    for row in ROWS.values():
        if row.kind != "url":
            tracks.append(row.track)
            continue
        with open(checkpoints.resolve.get(row=row.track).output[0]) as f:
            tracks += [line.split("\t", 1)[0] for line in f.read().splitlines()[1:]]
    return tracks


def tracks_by_batch():
    """Batch id -> its track ids (sheet order); only batches that hold a track exist."""
    return _group(tuple(all_tracks()))


@functools.cache  # input functions ask for this dozens of times per run
def _group(tracks):
    batches = {}
    for track in tracks:
        batches.setdefault(batch_of(track, config["batches"]), []).append(track)
    return batches


def batch_tracks(wildcards):
    return tracks_by_batch().get(wildcards.batch, [])


def in_splits(tracks, splits):
    """Those of ``tracks`` whose split (the sheet's, or else the hash's) is one of ``splits``."""
    fractions = config["shard"]["fractions"]
    return [t for t in tracks if (row_of(t, ROWS).split or split_of(t, fractions)) in splits]


def augmented_tracks(wildcards):
    """The batch's tracks whose split gets variants."""
    return in_splits(batch_tracks(wildcards), config["augment"]["splits"])


def made_from_input():
    """What clip and tokenize read of a batch: its separated tracks and their variants, or
    (task continuation or mix) its ingested recordings."""
    if WHOLE:
        return {"ingested": record("ingest"), **kept_audio("audio", audio_folder("ingest"))}
    inputs = {"separated": record("separate"), **kept_audio("audio", audio_folder("separate"))}
    if VARIANTS:
        inputs |= {"augmented": record("augment"),
                   **kept_audio("variant_audio", audio_folder("augment"))}
    return inputs


def ingest_jobs(wildcards):
    """What ingest needs to know of each track of the batch (the script's input)."""
    jobs = []
    for track in batch_tracks(wildcards):
        row = row_of(track, ROWS)
        jobs.append({"track": track, "row": row.track, "kind": row.kind,
                     "source": source_of(row, stems=given_stems(row)),
                     "resolved": f"results/resolve/{row.track}.tsv" if row.kind == "url" else None})
    return jobs


def ingest_input(wildcards):
    """Files ingest reads: demo songs (their mixture or stems, and truth), existing local
    sources, and the resolved playlists its tracks come from.

    A missing local source is not an input: it becomes a failure row, not a DAG error.
    """
    inputs = {job["resolved"] for job in ingest_jobs(wildcards) if job["resolved"]}
    for job in ingest_jobs(wildcards):
        if job["kind"] == "demo":
            source = Path(job["source"])
            inputs.add(str(source.parent / "truth.json"))
            if source.name == "stems":
                inputs.update(str(source / f"{stem}.flac") for stem in STEMS)
            else:
                inputs.add(job["source"])
        elif job["kind"] != "url" and os.path.exists(job["source"]):
            inputs.add(job["source"])
    return sorted(inputs)


def separate_input(wildcards):
    inputs = {"ingested": record("ingest", wildcards.batch),
              **kept_audio("audio", audio_folder("ingest", wildcards.batch))}
    # given stems need no model
    if any(not given_stems(row_of(t, ROWS)) for t in batch_tracks(wildcards)):
        inputs["weights"] = weights_manifest("demucs")
    return inputs


def given_stems(row):
    return row.kind == "stems" or (row.kind == "demo" and DEMO_STEMS)


def source_of(row, stems=False):
    """The file (or stems folder, with ``stems``) a row's audio is read from."""
    if row.kind == "demo":
        folder = f"results/demo_corpus/{row.demo_name}"
        return f"{folder}/stems" if stems else f"{folder}/mixture.flac"
    return row.source


def demo_truths():
    """The truth.json of each demo song of the sheet, by its row: a demo row's, or the one
    beside a folder of stems (the synthesizer writes one beside its stems)."""
    truths = {r.track: f"results/demo_corpus/{r.demo_name}/truth.json"
              for r in ROWS.values() if r.kind == "demo"}
    stems = {r.track: Path(r.source).parent / "truth.json"
             for r in ROWS.values() if r.kind == "stems"}
    return truths | {track: str(path) for track, path in stems.items() if path.is_file()}


def demo_solos(split):
    """The saxophone stem and truth of each demo song of the sheet in ``split``, by row."""
    return {r.track: {"stem": f"results/demo_corpus/{r.demo_name}/stems/other.flac",
                      "truth": f"results/demo_corpus/{r.demo_name}/truth.json"}
            for r in ROWS.values() if r.kind == "demo" and in_splits([r.track], [split])}


def accompany_backings():
    """What accompany needs to know of each row of its sheet (the script's input)."""
    return [{"name": r.track, "kind": r.kind, "source": source_of(r), "tags": row_tags(r)}
            for r in ACCOMPANY_ROWS.values()]


def sheet_sources(rows):
    """The files a sheet's rows read that exist (a missing one becomes a failed track at
    ingest, not a DAG error), and the demo songs they need."""
    return [source_of(r) for r in rows if r.kind == "demo"
            or (r.kind != "url" and os.path.exists(r.source))]


def train_codec_input(wildcards):
    """The training tracks' ingested audio (their batches' records), or codec.tracks' sheet
    and what it reads."""
    if not CODEC_ROWS:
        return {"ingested": per_batch(record("ingest", "{batch}"))(wildcards)}
    return {"sheet": config["codec"]["tracks"], "sources": sheet_sources(CODEC_ROWS.values())}


def accompany_input(wildcards):
    """The trained model, the weights of its codec (and separator), and the files the sheet
    names that exist (a missing one becomes an error line, not a DAG error)."""
    inputs = {"model": "results/train/model.safetensors", "info": "results/train/config.json",
              "summary": "results/train/train.json", "codec": weights_manifest("codec")}
    if config["accompany"]["separate"]:
        inputs["separator"] = weights_manifest("demucs")
    inputs["sources"] = sheet_sources(ACCOMPANY_ROWS.values())
    return inputs


def per_batch(pattern):
    """An input function: ``pattern`` formatted for every batch that holds a track."""
    return lambda wildcards: [pattern.format(batch=b) for b in sorted(tracks_by_batch())]


# profiles/slurm reads the config's slurm section through these variables: a profile cannot
# see the config, and Snakemake expands $VARS in resource values when a job is built.
os.environ.update({f"SOLOIST_SLURM_{key.upper()}": str(value)
                   for key, value in config["slurm"].items() if key != "runtime"})
os.environ.update({f"SOLOIST_SLURM_RUNTIME_{rule.upper()}": str(value)
                   for rule, value in config["slurm"]["runtime"].items()})


def tracks_of_batch(batch):
    """The tracks of batch ``batch``, for a failure message (none while a URL row is not
    yet resolved)."""
    try:
        return tracks_by_batch().get(batch, [])
    except Exception:
        return []


def build_report():
    """results/report.html after a default run: the same command line again, with --report."""
    if not set(workflow.dag_settings.targets) <= {"all"}:
        return None
    cmd = [sys.executable, "-m", "snakemake", *sys.argv[1:], "--nolock", "--report",
           "results/report.html"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return "could not be built (above); try: snakemake --report results/report.html"
    return "results/report.html (also: snakemake --report results/report.zip)"
