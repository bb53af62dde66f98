"""Tag conditioning: sheet columns (and a demo's tempo and key) into the shards, the model,
its evaluation and generation."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import (
    resumed_after_sigterm,
    run_train,
    snakemake,
    twelve_steps,
    with_weights,
    workflow_copy,
)

from soloist.condition import Vocabulary, shifted
from soloist.config import ConfigError, read_tracks, validate_config
from soloist.io import read_json

COLUMNS = ["style", "tempo", "key"]
TAGGED = {
    "tracks": "tracks.tsv", "weights": "random", "demo": {"seconds": 20},
    "condition": {"columns": COLUMNS, "buckets": 4},
    "train": {"steps": 4, "batch_size": 4, "seconds": 2, "workers": 0, "eval_every": 4,
              "checkpoint_every": 4, "warmup_steps": 1, "epoch_batches": 4},
    "evaluate": {"examples": 1, "batches": 2, "seconds": 2}}
# style: a tag of the sheet's own; tempo and key: each demo song's truth
SHEET = ("track\tsource\tsplit\tstyle\n"
         "song1\tdemo:song1\ttrain\tbop\nsong2\tdemo:song2\ttrain\tballad\n"
         "song3\tdemo:song3\ttest\tbop\nsong4\tdemo:song4\ttest\tballad\n")


@pytest.fixture(scope="module")
def tagged(tmp_path_factory, random_weights):
    workdir = tmp_path_factory.mktemp("tagged")
    workflow_copy(workdir)
    with_weights(workdir, random_weights)
    (workdir / "tracks.tsv").write_text(SHEET)
    snakemake(workdir, "evaluate", config=TAGGED)
    return workdir


def truth(workdir, song: str) -> dict[str, str]:
    t = read_json(workdir / f"results/demo_corpus/{song}/truth.json")
    return {"tempo": str(t["tempo_bpm"]), "key": t["key"]}


def test_samples_carry_the_sheets_tags_and_the_demos_truth(tagged):
    styles = {"song1": "bop", "song2": "ballad", "song3": "bop", "song4": "ballad"}
    stats = read_json(tagged / "results/shards/stats.json")
    for t in stats["per_track"]:
        assert t["tags"] == {"style": styles[t["track"]], **truth(tagged, t["track"])}
    urls = sorted(str(p) for p in (tagged / "results/shards").glob("*/*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    with_windows = {t["track"] for t in stats["per_track"] if t["windows"]}
    assert {s["json"]["track"] for s in samples} == with_windows >= {"song1", "song3", "song4"}
    for s in samples:
        song = s["json"]["track"]
        assert s["json"]["tags"] == {"style": styles[song], **truth(tagged, song)}
    manifest = pq.read_table(tagged / "results/shards/manifest.parquet").to_pylist()
    assert {r["track"]: dict(r["tags"])["style"] for r in manifest} == \
        {t: styles[t] for t in with_windows}


def test_the_model_keeps_its_training_vocabulary_and_reports_what_tags_change(tagged):
    info = read_json(tagged / "results/train/config.json")
    vocab = Vocabulary(**info["condition"])
    assert vocab.columns == COLUMNS and vocab.values["style"] == ["ballad", "bop"]
    assert "tempo" in vocab.edges  # numeric: bucketed
    assert info["model"]["tags"] == vocab.sizes()
    metrics = read_json(tagged / "results/evaluate/metrics.json")
    for key in ("tags_ratio", *(f"tags_ratio_{c}" for c in COLUMNS)):
        assert math.isfinite(metrics[key]), key
    # the test songs' tags differ, so a model that reads them scores another's differently
    assert metrics["tags_ratio"] != 1.0 and metrics["tags_ratio_style"] != 1.0


def test_a_tagged_model_resumes_after_sigterm_with_the_same_losses(tagged, tmp_path):
    stopped_at, _ = resumed_after_sigterm(tagged / "results/shards", tmp_path,
                                          twelve_steps(TAGGED, tmp_path))
    assert 4 <= stopped_at < 12


def test_other_buckets_start_a_new_training_instead_of_resuming(tagged, tmp_path):
    shutil.copytree(tagged / "results/train/checkpoints", tmp_path / "out/checkpoints")
    overlay = TAGGED | {"condition": TAGGED["condition"] | {"buckets": 2}}
    proc = run_train(tagged / "results/shards", tmp_path / "out", twelve_steps(overlay, tmp_path))
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert "the data or training settings changed" in output and "resuming" not in output
    assert read_json(tmp_path / "out/config.json")["model"]["tags"][1] == 3  # tempo: 2 buckets


def test_accompany_takes_tags_and_a_guidance_scale_per_column(tagged, tmp_path):
    cmd = [sys.executable, "-m", "soloist.cli", "accompany", "demo:song9", "--no-separate",
           "--model", str(tagged / "results/train"), "-o", str(tmp_path / "out"),
           "--seconds", "3", "--overlap", "0.5", "--weights", str(tagged / "resources/weights"),
           "--tag", "style=bop", "--tag", "tempo=150", "--tag-cfg", "style=3"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = read_json(tmp_path / "out/accompany.json")
    assert summary["sampling"]["tag_cfg"] == [3.0, 1.0, 1.0]  # style, tempo, key
    assert summary["tags"] == {"song9": {"style": "bop", "tempo": "150"}}
    unknown = subprocess.run([*cmd[:-2], "--tag-cfg", "mood=2"], capture_output=True,
                             text=True, cwd=tmp_path)
    assert unknown.returncode == 1
    assert "the model knows no tag 'mood' (it was conditioned on style, tempo, key)" \
        in unknown.stderr


def test_publish_says_which_tags_the_model_takes(tagged):
    snakemake(tagged, "publish", config=TAGGED)
    text = (tagged / "results/publish/README.md").read_text()
    assert "`condition` (its tag columns, style, tempo, key, and their values" in text
    assert "| tags_ratio | " in text
    assert read_json(tagged / "results/publish/config.json")["condition"]["columns"] == COLUMNS


def test_a_column_missing_from_the_sheet_is_a_config_error(tmp_path):
    sheet = tmp_path / "tracks.tsv"
    sheet.write_text("track\tsource\tmood\nsong1\tdemo:song1\tcalm\nrec\trec.wav\tsad\n")
    assert read_tracks(sheet, condition=["mood"])["rec"].tags == {"mood": "sad"}
    with pytest.raises(ConfigError, match=r"condition.columns: 'tempo' is not a column of "
                                          r"the track sheet .* \(its columns: track, source, "
                                          r"mood\)"):
        read_tracks(sheet, condition=["mood", "tempo"])
    # demo songs tag themselves with tempo and key
    sheet.write_text("track\tsource\nsong1\tdemo:song1\n")
    assert read_tracks(sheet, condition=["tempo", "key"])
    with pytest.raises(ConfigError, match="condition.columns"):
        validate_config({"condition": {"columns": ["track"]}})


def test_numeric_tags_are_bucketed_and_unseen_ones_are_none():
    vocab = Vocabulary.fit([{"tempo": t, "key": k} for t, k in
                            (("90", "C"), ("120", "D"), ("150", "C"), ("180", "E"))],
                           ["tempo", "key"], buckets=2)
    assert vocab.edges == {"tempo": [135.0]} and vocab.values == {"key": ["C", "D", "E"]}
    assert vocab.sizes() == [3, 4]
    assert vocab.ids({"tempo": "100", "key": "D"}) == [1, 2]
    assert vocab.ids({"tempo": "200", "key": "F#"}) == [2, 0]  # an unseen key: none
    assert vocab.ids({}) == [0, 0]


def test_a_variant_is_tagged_at_its_own_tempo_and_key():
    tags = {"tempo": "120", "key": "Ab", "style": "bop"}
    assert shifted(tags, "p+2t0.90") == {"tempo": "108", "key": "Bb", "style": "bop"}
    assert shifted({"key": "F#m", "tempo": "fast"}, "p-7t1.10") == {"key": "Bm", "tempo": "fast"}
    assert shifted({"key": "?"}, "p+1t1.00") == {"key": "?"}
