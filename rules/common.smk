import functools
import os

from soloist.config import batch_of, read_tracks, row_of, validate_config

# Scripts import soloist from this checkout, also inside --sdm conda environments.
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, (workflow.basedir, os.getenv("PYTHONPATH")))))

validate_config(config)
ROWS = read_tracks(config["tracks"])
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


def per_batch(pattern):
    """An input function: ``pattern`` formatted for every batch that holds a track."""
    return lambda wildcards: [pattern.format(batch=b) for b in sorted(tracks_by_batch())]
