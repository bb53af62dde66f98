"""Tasks beside the solo one on the same DAG: continuation (a recording's next segment), of
codes or of latents, and mix (two segments' latents through complementary masks)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from conftest import (
    planned_jobs,
    resumed_after_sigterm,
    snakemake,
    twelve_steps,
    with_weights,
    workflow_copy,
)

from soloist.config import ConfigError, batch_of, validate_config
from soloist.io import read_json, read_npy
from soloist.model import Soloist

CONTINUATION = {
    "tracks": "tracks.tsv", "weights": "random", "demo": {"seconds": 20},
    "task": {"name": "continuation", "seconds": 4},
    "train": {"steps": 2, "batch_size": 2, "seconds": 2, "workers": 0, "eval_every": 2,
              "checkpoint_every": 2, "warmup_steps": 1, "epoch_batches": 4},
    "evaluate": {"examples": 1, "batches": 1, "seconds": 2}}
LATENTS = CONTINUATION | {"task": CONTINUATION["task"] | {"output": "latents"}}
# the critic joins after a step, so that a resumed run has it on both sides of the cut
MIX = CONTINUATION | {"task": {"name": "mix", "seconds": 4},
                      "mix": {"adversarial": 0.5, "adversarial_from": 1}}


def two_songs(workdir: Path, weights: Path, config: dict) -> Path:
    """``workdir`` after ``evaluate`` with ``config`` on two 20 s demo songs, one to train
    on and one to test on."""
    workflow_copy(workdir)
    with_weights(workdir, weights)
    (workdir / "tracks.tsv").write_text("track\tsource\tsplit\nsong1\tdemo:song1\ttrain\n"
                                        "song2\tdemo:song2\ttest\n")
    snakemake(workdir, "evaluate", config=config)
    return workdir


def pairs(workdir: Path) -> tuple[np.ndarray, list[dict]]:
    """song1's tokens (its mix, whole) and its training samples; checks that each sample is
    a pair of consecutive 4 s segments of them."""
    mix = read_npy(workdir / f"results/tokenize/{batch_of('song1', 8)}/song1/mix.npy")
    urls = sorted(str(p) for p in (workdir / "results/shards/train").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    # pairs of 4 s segments, one every 4 s, in a 20 s song: 4 pairs where the song plays
    assert 1 <= len(samples) <= 4
    for s in samples:
        meta, start = s["json"], s["json"]["frame_start"]
        assert meta["task"] == "continuation" and meta["frames"] == 300
        np.testing.assert_array_equal(s["context.npy"], mix[:, start:start + 300])
        np.testing.assert_array_equal(s["target.npy"], mix[:, start + 300:start + 600])
    return mix, samples


@pytest.fixture(scope="module")
def continued(tmp_path_factory, random_weights):
    return two_songs(tmp_path_factory.mktemp("continuation"), random_weights, CONTINUATION)


def test_continuation_tokenizes_recordings_whole_without_separating(continued):
    assert not (continued / "results/separate").exists()
    folder = continued / f"results/tokenize/{batch_of('song1', 8)}/song1"
    assert read_npy(folder / "mix.npy").shape == (4, 20 * 75)
    assert not (folder / "context.npy").exists()
    assert planned_jobs(continued, "evaluate", config=CONTINUATION) == {}


def test_continuation_shards_hold_consecutive_segment_pairs(continued):
    mix, samples = pairs(continued)
    assert mix.dtype == np.int16
    stats = read_json(continued / "results/shards/stats.json")
    assert stats["splits"]["train"]["samples"] == len(samples)
    assert stats["clip_vs_truth"] is None  # no solo was looked for


def test_continuation_trains_and_evaluates(continued):
    assert read_json(continued / "results/train/train.json")["steps"] == 2
    assert read_json(continued / "results/evaluate/metrics.json")["samples"] > 0


@pytest.mark.parametrize(("run", "config"), [("continued", CONTINUATION), ("latent", LATENTS),
                                           ("mixed", MIX)])
def test_every_task_resumes_after_sigterm_with_the_same_losses(run, config, request, tmp_path):
    shards = request.getfixturevalue(run) / "results/shards"
    stopped_at, _ = resumed_after_sigterm(shards, tmp_path, twelve_steps(config, tmp_path))
    assert 2 <= stopped_at < 12
    saved = read_json(tmp_path / "cut/config.json")
    assert (saved["task"], saved["model"]["latents"]) == \
        (config["task"]["name"], 128 if run != "continued" else 0)


def test_soloist_continue_extends_a_recording_and_names_a_bad_one(continued, tmp_path):
    cmd = [sys.executable, "-m", "soloist.cli", "continue", "demo:song9", "gone.wav",
           "--model", str(continued / "results/train"), "-o", str(tmp_path / "out"),
           "--seconds", "3", "--weights", str(continued / "resources/weights")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 of 2 recordings extended by 3 s" in done.stdout
    assert "soloist continue: gone (gone.wav): " in done.stderr
    continuation = sf.info(tmp_path / "out/song9/continuation.wav")
    assert continuation.samplerate == 24000 and continuation.frames == 3 * 24000
    assert sf.info(tmp_path / "out/song9/extended.wav").frames == (60 + 3) * 24000
    summary = read_json(tmp_path / "out/continue.json")
    assert [t["ok"] for t in summary["tracks"]] == [True, False]
    untagged = subprocess.run([*cmd, "--tag", "style=bop"], capture_output=True, text=True,
                              cwd=tmp_path)
    assert untagged.returncode == 1
    assert "the model knows no tag 'style' (it was conditioned on no tags)" in untagged.stderr
    # accompany will not play along with a model that continues
    refused = subprocess.run([*cmd[:3], "accompany", "gone.wav", *cmd[6:10], *cmd[-2:]],
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1
    assert "trained for task 'continuation', not solo" in refused.stderr


def test_publish_writes_a_continuation_model_with_a_card_worded_for_it(continued):
    snakemake(continued, "publish", config=CONTINUATION)
    text = (continued / "results/publish/README.md").read_text()
    for words in ("# soloist: music continuation", "soloist continue my_recording.mp3 "
                  "--model results/publish", "the real next segments given another track's",
                  "continuation", "examples/00_mix.wav"):
        assert words in text, words
    for words in ("saxophone", "The separator", "soloist accompany"):
        assert words not in text, words
    assert read_json(continued / "results/publish/config.json")["task"] == "continuation"


@pytest.fixture(scope="module")
def latent(continued, tmp_path_factory):
    """The continuation run again for latents, in a copy of its folder."""
    workdir = tmp_path_factory.mktemp("latents")
    shutil.copytree(continued, workdir, dirs_exist_ok=True)
    snakemake(workdir, "evaluate", config=LATENTS)
    return workdir


def test_latents_retokenize_and_train_without_ingesting_again(continued, latent):
    assert planned_jobs(continued, "evaluate", config=LATENTS, overlay="latents.yaml") == \
        {"tokenize": 2, "shard": 1, "train": 1, "evaluate": 1}
    mix, samples = pairs(latent)
    # EnCodec's encoder frames before quantization: 128 channels at 75 Hz
    assert mix.dtype == np.float16 and mix.shape == (128, 20 * 75)
    assert read_json(latent / "results/shards/stats.json")["codec"]["latents"] == 128
    # the model reads them standardized by the training samples' spread, per channel
    frames = np.concatenate([np.concatenate([s["context.npy"], s["target.npy"]], -1)
                             for s in samples], -1).astype(np.float64)
    model = Soloist.from_pretrained(latent / "results/train")
    np.testing.assert_allclose(model.std.numpy(), frames.std(-1, ddof=1), rtol=1e-4)
    np.testing.assert_allclose(model.mean.numpy(), frames.mean(-1), rtol=1e-4, atol=1e-7)


def test_a_model_of_latents_is_scored_by_its_squared_error(latent):
    workdir = latent
    config = read_json(workdir / "results/train/config.json")
    assert (config["model"]["latents"], config["model"]["codebooks"]) == (128, 1)
    metrics = read_json(workdir / "results/evaluate/metrics.json")
    assert "ce" not in metrics and metrics["mse"] > 0
    assert metrics["listen_ratio"] == pytest.approx(
        metrics["mse_shuffled_backing"] / metrics["mse"])
    page = (workdir / "results/evaluate/index.html").read_text()
    assert f"Test MSE {metrics['mse']:.3f} with the real previous segment" in page
    generated = sf.info(workdir / "results/evaluate/examples/00_generated.wav")
    assert generated.frames == 2 * 24000


def test_soloist_continue_extends_a_recording_with_a_model_of_latents(latent, tmp_path):
    workdir = latent
    done = subprocess.run(
        [sys.executable, "-m", "soloist.cli", "continue", "demo:song9", "--model",
         str(workdir / "results/train"), "-o", str(tmp_path / "out"), "--seconds", "3",
         "--weights", str(workdir / "resources/weights")],
        capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    continuation, _ = sf.read(tmp_path / "out/song9/continuation.wav")
    assert len(continuation) == 3 * 24000 and np.abs(continuation).max() > 0
    snakemake(workdir, "publish", config=LATENTS)
    card = (workdir / "results/publish/README.md").read_text()
    assert "the decoder regresses the next\nsegment's latents" in card
    assert "mean squared error of the real next segments" in card


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, random_weights):
    return two_songs(tmp_path_factory.mktemp("mix"), random_weights, MIX)


def test_a_mix_mixes_latents_of_consecutive_segments(mixed):
    assert not (mixed / "results/separate").exists()
    mix, _ = pairs(mixed)  # A and B: a segment and the one after it
    assert mix.dtype == np.float16 and mix.shape == (128, 20 * 75)
    config = read_json(mixed / "results/train/config.json")
    assert config["task"] == "mix" and config["model"]["latents"] == 128
    assert config["model"]["mix"] == {"rms": 1.0, "balance": 1.0, "complementarity": 1.0,
                                      "adversarial": 0.5, "adversarial_from": 1}


def test_a_mixer_is_scored_by_balance_and_complementarity(mixed):
    metrics = read_json(mixed / "results/evaluate/metrics.json")
    for key in ("loss", "balance", "complementarity", "complementarity_even"):
        assert 0 <= metrics[key] < math.inf, key
    assert 0 < metrics["balance"] < 1 and metrics["complementarity"] <= 1
    page = (mixed / "results/evaluate/index.html").read_text()
    assert "Mixed through complementary masks" in page
    assert f"complementarity {metrics['complementarity']:.3f}" in page
    assert sf.info(mixed / "results/evaluate/examples/00_generated.wav").frames == 2 * 24000


def test_a_mixer_trains_on_the_shards_of_a_continuation_of_latents(latent):
    assert planned_jobs(latent, "evaluate", config=MIX, overlay="mix.yaml") == \
        {"train": 1, "evaluate": 1}


def test_a_mixer_is_published_with_a_card_of_its_own_and_refused_by_continue(mixed, tmp_path):
    workdir = mixed
    snakemake(workdir, "publish", config=MIX)
    card = (workdir / "results/publish/README.md").read_text()
    for words in ("# soloist: mixing through complementary masks", "A transformer mask "
                  "generator", "`complementarity_even` is an even mix's", "| balance |"):
        assert words in card, words
    assert "Does it listen?" not in card and "soloist accompany" not in card
    refused = subprocess.run(
        [sys.executable, "-m", "soloist.cli", "continue", "demo:song9", "--model",
         str(workdir / "results/train"), "-o", str(tmp_path / "out"), "--weights",
         str(workdir / "resources/weights")], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1
    assert ("trained for task 'mix', not continuation: its mixes are on evaluate's listening "
            "page") in refused.stderr


@pytest.mark.parametrize(("config", "message"), [
    ({"task": {"name": "medley"}}, "task.name"),
    ({"task": {"name": "continuation", "seconds": 4}, "train": {"seconds": 5}},
     "train.seconds (5) is longer than task.seconds (4)"),
    ({"task": {"name": "continuation"}, "augment": {"variants": [{"semitones": 2, "tempo": 1}]}},
     "augment.variants: task continuation takes no variants yet"),
    ({"task": {"output": "latents"}}, "task.output: latents is for task continuation"),
    ({"tokenize": {"model": "own"}, "codec": {"bottleneck": "vae"}},
     "codec.bottleneck: vae writes latents, not codes"),
    ({"task": {"name": "continuation", "output": "tokens"}}, "task.output"),
    ({"task": {"name": "mix"}, "condition": {"columns": ["style"]}},
     "condition.columns: task mix takes no tags"),
    ({"task": {"name": "mix"}, "mix": {"critic": 1.0}}, "mix"),
    ({"task": {"name": "mix"}, "augment": {"variants": [{"semitones": 2, "tempo": 1}]}},
     "augment.variants: task mix takes no variants yet"),
])
def test_task_settings_are_checked(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(config)
