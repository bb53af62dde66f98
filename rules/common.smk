import functools
import os

from soloist.config import batch_of, read_tracks, row_of, validate_config

# Scripts import soloist from this checkout, also inside --sdm conda environments.
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, (workflow.basedir, os.getenv("PYTHONPATH")))))

validate_config(config)
ROWS = read_tracks(config["tracks"])
ACCOMPANY_ROWS = read_tracks(config["accompany"]["tracks"])
WEIGHTS = config["weights"]


wildcard_constraints:
    row=r"[A-Za-z0-9._-]+",
    batch=r"b[0-9]+",
    name=r"[A-Za-z0-9._-]+",


def weights_manifest(family):
    name = config["separate"]["model"] if family == "demucs" else config["tokenize"]["model"]
    return f"resources/weights/{WEIGHTS}/{family}/{name}.json"


def intermediate(path):
    """Audio that clip/tokenize re-read: kept unless keep_intermediates is false."""
    return path if config["keep_intermediates"] else temp(path)


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


def ingest_jobs(wildcards):
    """What ingest needs to know of each track of the batch (the script's input)."""
    jobs = []
    for track in batch_tracks(wildcards):
        row = row_of(track, ROWS)
        jobs.append({"track": track, "row": row.track, "kind": row.kind,
                     "source": source_of(row),
                     "resolved": f"results/resolve/{row.track}.tsv" if row.kind == "url" else None})
    return jobs


def ingest_input(wildcards):
    """Files ingest reads: demo mixtures, existing local sources, and every resolved playlist
    (which tracks a batch holds depends on all of them).

    A missing local source is not an input: it becomes a failure row, not a DAG error.
    """
    inputs = {f"results/resolve/{r.track}.tsv" for r in ROWS.values() if r.kind == "url"}
    for job in ingest_jobs(wildcards):
        if job["kind"] == "demo" or (job["kind"] != "url" and os.path.exists(job["source"])):
            inputs.add(job["source"])
    return sorted(inputs)


def separate_input(wildcards):
    inputs = {"audio": f"results/ingest/{wildcards.batch}/audio",
              "info": f"results/ingest/{wildcards.batch}/info"}
    # given stems need no model
    if any(row_of(t, ROWS).kind != "stems" for t in batch_tracks(wildcards)):
        inputs["weights"] = weights_manifest("demucs")
    return inputs


def source_of(row):
    if row.kind == "demo":
        return f"results/demo_corpus/{row.demo_name}/mixture.flac"
    return row.source


def accompany_backings():
    """What accompany needs to know of each row of its sheet (the script's input)."""
    return [{"name": r.track, "kind": r.kind, "source": source_of(r)}
            for r in ACCOMPANY_ROWS.values()]


def accompany_input(wildcards):
    """The trained model, the weights of its codec (and separator), and the files the sheet
    names that exist (a missing one becomes an error line, not a DAG error)."""
    inputs = {"model": "results/train/model.safetensors", "info": "results/train/config.json",
              "summary": "results/train/train.json", "codec": weights_manifest("encodec")}
    if config["accompany"]["separate"]:
        inputs["separator"] = weights_manifest("demucs")
    inputs["sources"] = [b["source"] for b in accompany_backings() if b["kind"] == "demo"
                         or (b["kind"] != "url" and os.path.exists(b["source"]))]
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


def train_resources(train):
    """One node: ``gpus`` GPUs for one torchrun. More nodes: one srun task per node, each
    starting a torchrun on its node's ``gpus`` GPUs (workflow/scripts/train.py)."""
    cpus = max(2, train["gpus"] * (train["workers"] + 1))  # a process and its loaders per GPU
    if train["nodes"] == 1:
        return {"gpu": train["gpus"], "cpus_per_task": cpus}
    # gres (per node), not gpu: with tasks, gpu would become --ntasks-per-gpu
    return {"nodes": train["nodes"], "tasks": train["nodes"], "tasks_per_gpu": 0,
            "gres": f"gpu:{train['gpus']}", "cpus_per_task": cpus, "mpi": "srun"}
