"""Play along: ``soloist accompany`` with the end-to-end run's model, and the accompany rule."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from browser import BOXES, CHECK_AUDIO, assert_fits, in_browser
from conftest import planned_jobs, snakemake, workflow_copy
from loopback import make_tone, serve_dir

from soloist.io import read_json
from soloist.synth import make_song

SOLOIST = Path(sys.executable).parent / "soloist"  # the console script of the install


def accompany(done: Path, *args: str) -> subprocess.CompletedProcess:
    """``soloist accompany`` with the model and weights of the end-to-end run."""
    return subprocess.run([str(SOLOIST), "accompany", *args, "--model",
                           str(done / "results/train"), "--weights",
                           str(done / "resources/weights")],
                          capture_output=True, text=True, cwd=done)


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    """A demo song 2.5 times the model's training window (5 s) long: mixture and stems."""
    folder = tmp_path_factory.mktemp("song")
    make_song("play", folder, seconds=12.5)
    return folder


def test_accompany_plays_a_full_length_solo_the_same_for_the_same_seed(done, song, tmp_path):
    window = read_json(done / "results/train/config.json")["window_seconds"]
    assert window == 5 and sf.info(song / "mixture.flac").duration == 2.5 * window
    inputs = [str(song / "mixture.flac"), str(song / "stems")]  # separated; given stems
    runs = [accompany(done, *inputs, "-o", str(tmp_path / out), "--seed", "3")
            for out in ("a", "b")]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
        assert "2 of 2 inputs played along with" in proc.stdout
        assert "NOT musically meaningful" in proc.stderr  # random weights, said loudly
    for name in ("mixture", "stems"):
        backing = sf.read(tmp_path / "a" / name / "backing.wav")[0]
        assert backing.shape == (round(12.5 * 44100), 2)
        for part in ("backing", "solo", "mix"):
            a, b = (tmp_path / out / name / f"{part}.wav" for out in ("a", "b"))
            assert sf.info(a).frames == len(backing) and sf.info(a).samplerate == 44100
            assert a.read_bytes() == b.read_bytes(), (name, part)  # same seed, same files
        solo = sf.read(tmp_path / "a" / name / "solo.wav")[0]
        assert np.abs(solo).max() > 0.01  # a solo over all of it, not a silent tail
        assert np.abs(solo[-len(solo) // 5:]).max() > 0.01
    summary = read_json(tmp_path / "a/accompany.json")
    assert [t["seconds"] for t in summary["tracks"]] == [12.5, 12.5]
    for track in summary["tracks"]:  # the truth-free fit, beside its floors
        assert set(track["fit"]) == {"key", "tempo_bpm", "generated", "tritone", "half_beat"}
        assert set(track["fit"]["generated"]) == {"in_key", "on_beat"}
    assert "in key" in (tmp_path / "a/index.html").read_text()
    other = accompany(done, *inputs[:1], "-o", str(tmp_path / "c"), "--seed", "4")
    assert other.returncode == 0
    assert (tmp_path / "c/mixture/solo.wav").read_bytes() != \
        (tmp_path / "a/mixture/solo.wav").read_bytes()


def test_the_listening_page_plays_in_headless_chromium(done, song, tmp_path):
    proc = accompany(done, str(song / "stems"), str(tmp_path / "missing.wav"), "-o",
                     str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "out/index.html").read_text()
    assert "missing" in page and "file not found" in page  # the failure is on the page too
    chromium = shutil.which("chromium")
    assert chromium, "install.sh installs Debian's chromium"
    shot = tmp_path / "page.png"
    with serve_dir(tmp_path / "out") as base_url:
        results = asyncio.run(in_browser(chromium, f"{base_url}/index.html", CHECK_AUDIO,
                                         tmp_path / "profile"))
        boxes = asyncio.run(in_browser(chromium, f"{base_url}/index.html", BOXES,
                                       tmp_path / "profile2", screenshot=shot))
    assert sorted(r["src"] for r in results) == \
        [f"stems/{part}.wav" for part in ("backing", "mix", "solo")]
    for r in results:
        assert r.get("status") == 200 and r["seconds"] == pytest.approx(12.5, abs=0.01), r
    assert len(boxes["boxes"]) == 4  # backing, solo, mix and the spectrograms
    assert_fits(boxes, shot)


def test_no_separate_takes_the_input_as_the_backing(done, song, tmp_path):
    proc = accompany(done, str(song / "mixture.flac"), "--no-separate", "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    backing = sf.read(tmp_path / "mixture/backing.wav")[0]
    mixture = sf.read(song / "mixture.flac")[0]
    np.testing.assert_allclose(backing, mixture, atol=2 / 32768)


def test_bad_backings_get_one_error_line_each_and_the_others_complete(done, song, media,
                                                                       tmp_path):
    folder, _, dead_url = media
    make_tone(tmp_path / "short.wav", 0.5)
    bad = {"silent": (str(folder / "silent.wav"), "silent: peak"),
           "short": (str(tmp_path / "short.wav"), "duration 0.50 s below ingest.min_seconds"),
           "corrupt": (str(folder / "corrupt.mp3"), "cannot decode corrupt.mp3"),
           "nothing.mp3": (dead_url, "connection refused")}
    sources = [s for s, _ in bad.values()]
    proc = accompany(done, *sources, str(song / "stems"), "--seconds", "6", "-o",
                     str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("soloist accompany:")]
    assert len(errors) == len(bad), proc.stderr
    for line, (name, (source, words)) in zip(errors, bad.items(), strict=True):
        assert line.startswith(f"soloist accompany: {name} ({source}): ") and words in line, line
    assert sf.info(tmp_path / "out/stems/mix.wav").duration == 6.0  # --seconds
    summary = read_json(tmp_path / "out/accompany.json")
    assert [t["ok"] for t in summary["tracks"]] == [False] * len(bad) + [True]
    everything_bad = accompany(done, *sources, "-o", str(tmp_path / "none"))
    assert everything_bad.returncode == 1
    assert "0 of 4 inputs played along with" in everything_bad.stdout


def test_a_bad_model_folder_is_one_clear_error(done, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(done / "results/train", folder)
    (folder / "config.json").unlink()
    proc = subprocess.run([str(SOLOIST), "accompany", "demo:x", "--model", str(folder), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"soloist accompany: {folder / 'config.json'} is missing: a "
                                   "soloist model folder holds config.json and model.safetensors")


def test_the_accompany_rule_comes_after_train(tmp_path):
    jobs = planned_jobs(workflow_copy(tmp_path), "accompany")
    assert jobs["train"] == 1 and jobs["accompany"] == 1 and "evaluate" not in jobs
    assert jobs["demo_corpus"] == 8 + 2  # the training songs and config/accompany.tsv's two


def test_the_accompany_rule_plays_along_and_logs_into_the_training_run(done):
    from mlflow.tracking import MlflowClient

    (done / "config/play.tsv").write_text("track\tsource\nplay1\tdemo:play1\n"
                                          "play2\tdemo:play2\n")
    config = {"accompany": {"tracks": "config/play.tsv"}}
    assert planned_jobs(done, "accompany", config=config) == \
        {"demo_corpus": 2, "accompany": 1}  # the model is there: nothing else reruns
    snakemake(done, "accompany", config=config)
    out = done / "results/accompany"
    for track in ("play1", "play2"):
        mixture = sf.info(done / f"results/demo_corpus/{track}/mixture.flac")
        for part in ("backing", "solo", "mix"):
            assert sf.info(out / track / f"{part}.wav").frames == mixture.frames
    assert "play2/mix.wav" in (out / "index.html").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{done}/results/mlflow.db")
    run_id = read_json(done / "results/train/train.json")["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.data.metrics["accompany/tracks_ok"] == 2 and "accompany/realtime" in \
        run.data.metrics
    files = {a.path for a in client.list_artifacts(run_id, "accompany/play1")}
    assert {"accompany/play1/solo.wav", "accompany/play1/mix.wav"} <= files
    assert planned_jobs(done, "accompany", config=config) == {}
    for key, value in (("device", "cpu"), ("batch_size", 2), ("compile", True),
                       ("threads", 1), ("gpus", 2)):  # where and how fast: no rerun
        assert planned_jobs(done, "accompany", config={"accompany": {**config["accompany"],
                                                                     key: value}}) == {}, key
    assert planned_jobs(done, "accompany", config={"accompany": {
        **config["accompany"], "temperature": 0.9}}) == {"accompany": 1}
