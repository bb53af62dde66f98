"""Only what a change can affect reruns: every config key, one at a time, after a finished run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import yaml
from conftest import BAD, GOOD, ROOT, planned_jobs
from test_workflow import batches

from soloist.config import batch_of

DEMOS = ["song1", "song2"]
TRACKS = [*GOOD, *BAD]
EVALUATE = {"evaluate": 1, "all": 1}
TRAIN = {"train": 1, **EVALUATE}
SHARD = {"shard": 1, **TRAIN}


def stages(*names: str, tracks: list[str] = TRACKS) -> dict[str, int]:
    """Per-batch stages ``names`` over the batches of ``tracks``, and everything after them."""
    return {name: batches(tracks) for name in names} | SHARD


def regrouped(n: int) -> int:
    """Batches of ``n`` that do not hold the same tracks as the batch of that name held
    with 8 batches (one that does keeps its outputs)."""
    def groups(batches: int) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for track in TRACKS:
            out.setdefault(batch_of(track, batches), set()).add(track)
        return out

    old = groups(8)
    return sum(tracks != old.get(b) for b, tracks in groups(n).items())


SEPARATE, CLIP, TOKENIZE = stages("separate", "clip", "tokenize"), stages("clip"), \
    stages("tokenize")
INGEST = stages("ingest", "separate", "clip", "tokenize")
NOTHING: dict[str, int] = {}
# dotted key -> (a new value, the jobs a dry run then plans on the finished e2e run).
# Keys that only say where or how fast a job runs plan nothing.
EXPECTED = {
    "tracks": ("config/same-sheet.tsv", NOTHING),  # the same sheet under another name
    # pretrained Demucs and EnCodec (tokenize.model: auto) instead of random Demucs and the
    # shipped codec: every job that reads one, and the demo songs enter as mixtures
    # (demo.stems: auto)
    "weights": ("pretrained", {"fetch_weights": 2, "ingest": batches(DEMOS)} | SEPARATE),
    # the audio becomes an input of clip and tokenize (temp() waits for its readers): they
    # rerun and find every track done
    "keep_intermediates": (False, stages("clip", "tokenize")),
    "batches": (4, {stage: regrouped(4) for stage in ("ingest", "separate", "clip",
                                                     "tokenize")} | SHARD),
    # clip and tokenize read the ingested recordings; nothing separates them
    "task.name": ("continuation", stages("clip", "tokenize")),
    "task.seconds": (8, NOTHING),  # the solo task has no segment pairs
    # latents need task continuation (or mix): both change here (tests/test_tasks.py checks
    # that task.output alone reruns tokenize and what follows, not clip)
    "task.output": ("latents", stages("clip", "tokenize")),
    # task mix's losses: the default run (task solo) has no mixer
    **{f"mix.{key}": (value, NOTHING) for key, value in {
        "rms": 0.5, "balance": 0.5, "complementarity": 2.0, "adversarial": 0.1,
        "adversarial_from": 10}.items()},
    # a column of the sheet: its tags go into the shards; the rest only shapes a model with tags
    "condition.columns": (["style"], SHARD),
    "condition.dropout": (0.2, NOTHING),
    "condition.buckets": (4, NOTHING),
    # the demo songs and the random Demucs change; the codec is the shipped one, seed or not
    "seed": (1, {"demo_corpus": 2, "fetch_weights": 1, "ingest": batches(DEMOS)} | SEPARATE),
    "demo.seconds": (25, {"demo_corpus": 2} | stages("ingest", "separate", "clip", "tokenize",
                                                     tracks=DEMOS)),
    "demo.variety": (True, {"demo_corpus": 2} | stages("ingest", "separate", "clip", "tokenize",
                                                       tracks=DEMOS)),
    "demo.stems": (False, stages("ingest", "separate", "clip", "tokenize", tracks=DEMOS)),
    "ingest.sample_rate": (48000, INGEST),
    "ingest.min_sample_rate": (8000, INGEST),
    "ingest.max_channels": (1, INGEST),
    "ingest.min_seconds": (2.0, INGEST),
    "ingest.max_seconds": (3000, INGEST),
    "ingest.silence_db": (-70.0, INGEST),
    "ingest.downloads": ("resources/elsewhere", NOTHING),
    "ingest.ytdlp.retries": (5, NOTHING),
    "ingest.ytdlp.socket_timeout": (30, NOTHING),
    "ingest.ytdlp.rate_limit": (1000000, NOTHING),
    # ingest too, once resolve has run: a dry run cannot see past a checkpoint
    "ingest.ytdlp.cookies": ("cookies.txt", {"resolve": 3} | SHARD),
    "ingest.ytdlp.format": ("bestaudio", {"resolve": 3} | SHARD),
    "separate.model": ("htdemucs", {"fetch_weights": 1} | SEPARATE),
    "separate.context": (["drums", "bass"], SEPARATE),
    "separate.target": (["other"], SEPARATE),
    "separate.keep_stems": (True, SEPARATE),
    "separate.shifts": (1, SEPARATE),
    "separate.overlap": (0.5, SEPARATE),
    "separate.segment": (5.0, SEPARATE),
    "separate.precision": ("fp32", SEPARATE),
    "separate.batch_size": (4, NOTHING),
    "separate.compile": (True, NOTHING),
    "separate.device": ("cpu", NOTHING),
    "separate.threads": (1, NOTHING),
    "separate.gpus": (2, NOTHING),
    # variants of the training tracks: made in every batch (the rule lists a batch's training
    # tracks), then clipped and tokenized; without variants, their splits change nothing
    "augment.variants": ([{"semitones": 2, "tempo": 1.0}],
                         {"augment": batches(TRACKS)} | stages("clip", "tokenize")),
    "augment.splits": (["train", "valid"], NOTHING),
    "augment.device": ("cpu", NOTHING),
    "augment.threads": (1, NOTHING),
    "augment.gpus": (2, NOTHING),
    "clip.frame_seconds": (0.2, CLIP),
    "clip.hop_seconds": (0.1, CLIP),
    "clip.active_percentile": (90, CLIP),
    "clip.relative_db": (20, CLIP),
    "clip.floor_db": (-40, CLIP),
    "clip.bridge_seconds": (1.0, CLIP),
    "clip.seconds": (8, CLIP),
    "clip.hop": (5, CLIP),
    "clip.min_active": (0.7, CLIP),
    "clip.min_context_active": (0.4, CLIP),
    # re-tokenizes and retrains with the new codec's weights, never re-separates
    "tokenize.model": ("dac_44khz", {"fetch_weights": 1} | TOKENIZE),
    "tokenize.codebooks": (2, TOKENIZE),
    "tokenize.chunk_seconds": (5, TOKENIZE),
    "tokenize.warmup_seconds": (1.0, TOKENIZE),
    "tokenize.precision": ("bf16", TOKENIZE),
    "tokenize.batch_size": (4, NOTHING),
    "tokenize.compile": (True, NOTHING),
    "tokenize.device": ("cpu", NOTHING),
    "tokenize.threads": (1, NOTHING),
    "tokenize.gpus": (2, NOTHING),
    "shard.fractions": ({"train": 0.7, "valid": 0.2, "test": 0.1}, SHARD),
    "shard.max_samples": (2, SHARD),
    "shard.max_bytes": (1000000, SHARD),
    **{f"train.{key}": (value, TRAIN) for key, value in {
        "preset": "base", "seconds": 4, "batch_size": 4, "grad_accum": 2, "steps": 301,
        "lr": 0.002, "min_lr": 0.0001, "warmup_steps": 10, "weight_decay": 0.0,
        "grad_clip": 0.5, "ema": 0.99, "context_dropout": 0.0, "eval_every": 50,
        "eval_batches": 2, "patience": 2, "epoch_batches": 50, "shuffle_buffer": 16,
        "workers": 0, "seed": 1, "gpus": 2, "nodes": 2}.items()},
    "train.checkpoint_every": (50, NOTHING),
    "train.compile": (True, NOTHING),
    "train.device": ("cpu", NOTHING),
    **{f"evaluate.{key}": (value, EVALUATE) for key, value in {
        "batches": 2, "examples": 1, "seconds": 4, "temperature": 0.9, "top_k": 50,
        "top_p": 0.9, "cfg_scale": 2.0, "seed": 1}.items()},
    "evaluate.device": ("cpu", NOTHING),
    # after-training rules, not in the default run: tests/test_accompany.py and
    # test_publish.py check what they rerun
    **{f"accompany.{key}": (value, NOTHING) for key, value in {
        "tracks": "config/same-sheet.tsv", "separate": False, "seconds": 5, "overlap": 1.0,
        "temperature": 0.9, "top_k": 50, "top_p": 0.9, "cfg_scale": 2.0, "tag_cfg": {"style": 2},
        "seed": 1, "batch_size": 2, "compile": True, "device": "cpu", "threads": 1,
        "gpus": 2}.items()},
    "publish.repo_id": ("you/model", NOTHING),
    "publish.private": (False, NOTHING),
    "publish.examples": (1, NOTHING),
    **{f"slurm.{key}": (value, NOTHING) for key, value in {
        "account": "lab", "partition": "short", "gpu_partition": "a100",
        "gpu_constraint": "a100", "runtime.default": 30, "runtime.separate": 60,
        "runtime.tokenize": 60, "runtime.train": "2d"}.items()},
    # the own codec's rules are not in the default run (tokenize.model: own brings them in;
    # tests/test_own_codec.py runs them)
    **{f"codec.{key}": (value, NOTHING) for key, value in {
        "tracks": "config/tracks.tsv", "sample_rate": 16000, "architecture": "seanet",
        "bottleneck": "vae", "commitment": 1.0,
        "channels": 16, "ratios": [8, 8, 5],
        "dimension": 64, "lstm_layers": 1, "codebooks": 4, "codebook_size": 512,
        "quantizer_dropout": 0.0, "kl_weight": 0.1, "kl_warmup_steps": 10, "free_bits": 0.0,
        "adversarial_from": 100, "segment_seconds": 2.0, "batch_size": 8, "steps": 10,
        "lr": 0.001, "min_lr": 0.0, "warmup_steps": 0, "log_every": 5, "checkpoint_every": 5,
        "workers": 0, "seed": 1, "device": "cpu", "gpus": 2}.items()},
    "evaluate_codec.seconds": (5, NOTHING),
    "mlflow.experiment": ("other", NOTHING),
    "mlflow.tracking_uri": ("sqlite:///results/other.db", NOTHING),
}
ATOMIC = {"shard.fractions"}  # its values must sum to 1: changed as one


def leaf_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub and prefix + key not in ATOMIC:
            keys += leaf_keys(sub, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def nested(key: str, value: object) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def test_every_config_key_is_in_the_table():
    schema = yaml.safe_load((ROOT / "config/schemas/config.schema.yaml").read_text())
    assert sorted(leaf_keys(schema)) == sorted(EXPECTED)


def test_each_key_reruns_exactly_what_depends_on_it(done):
    (done / "config/same-sheet.tsv").write_text((done / "config/e2e.tsv").read_text())
    (done / "cookies.txt").write_text("# Netscape HTTP Cookie File\n")

    def plan(item: tuple[int, str]) -> tuple[str, dict]:
        i, key = item
        value = EXPECTED[key][0]
        config = nested(key, value)
        if key == "task.output":
            config["task"]["name"] = "continuation"
        return key, planned_jobs(done, config=config, overlay=f"key{i}.yaml")

    with ThreadPoolExecutor(2) as pool:  # two cores: two dry runs at a time
        planned = dict(pool.map(plan, enumerate(EXPECTED)))
    wrong = {key: (jobs, EXPECTED[key][1]) for key, jobs in planned.items()
             if jobs != {k: v for k, v in EXPECTED[key][1].items() if v}}
    assert not wrong, "\n".join(f"{k}: planned {p}, expected {e}" for k, (p, e) in wrong.items())


def test_a_config_file_with_its_keys_reordered_reruns_nothing(done):
    def reverse(value: object) -> object:
        return {k: reverse(v) for k, v in reversed(value.items())} \
            if isinstance(value, dict) else value

    path = done / "config/config.yaml"
    text = path.read_text()
    config = yaml.safe_load(text)
    try:
        path.write_text(yaml.safe_dump(reverse(config), sort_keys=False))
        assert list(yaml.safe_load(path.read_text())["clip"]) != list(config["clip"])
        assert planned_jobs(done) == {}
    finally:
        path.write_text(text)
