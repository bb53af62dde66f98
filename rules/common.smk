import os

from soloist.config import read_tracks, row_of, validate_config

# Scripts import soloist from this checkout, also inside --sdm conda environments.
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, (workflow.basedir, os.getenv("PYTHONPATH")))))

validate_config(config)
ROWS = read_tracks(config["tracks"])
WEIGHTS = config["weights"]


wildcard_constraints:
    track=r"[A-Za-z0-9._-]+",
    row=r"[A-Za-z0-9._-]+",
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


def ingest_input(wildcards):
    row = row_of(wildcards.track, ROWS)
    if row.kind == "url":
        return {"resolved": f"results/resolve/{row.track}.tsv"}
    if row.kind == "demo":
        return {"source": f"results/demo_corpus/{row.demo_name}/mixture.flac"}
    # Only an existing local source is an input (a missing one becomes a failure row).
    return {"source": row.source} if os.path.exists(row.source) else {}


def separate_input(wildcards):
    inputs = {
        "audio": f"results/ingest/{wildcards.track}/audio.flac",
        "info": f"results/ingest/{wildcards.track}/info.json",
    }
    if row_of(wildcards.track, ROWS).kind != "stems":  # given stems need no model
        inputs["weights"] = weights_manifest("demucs")
    return inputs


def source_of(row):
    if row.kind == "demo":
        return f"results/demo_corpus/{row.demo_name}/mixture.flac"
    return row.source


def per_track(pattern):
    """An input function: ``pattern`` formatted for every track of the sheet."""
    return lambda wildcards: [pattern.format(track=t) for t in all_tracks()]
