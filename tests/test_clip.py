"""clip: windows where the soloist plays, judged against the demo corpus' ground truth."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from soloist import clip as cl
from soloist.config import validate_config
from soloist.io import read_audio, read_json, write_audio, write_json
from soloist.synth import make_song

SETTINGS = validate_config({})["clip"]


def truth_stems(song_dir, gain=1.0):
    """(context, target) paths from the demo's ground-truth stems, target scaled by ``gain``."""
    stems = {n: read_audio(song_dir / f"stems/{n}.flac")[0] for n in
             ("drums", "bass", "piano", "other")}
    write_audio(song_dir / "context.flac", stems["drums"] + stems["bass"] + stems["piano"],
                44100)
    write_audio(song_dir / f"target{gain}.flac", stems["other"] * gain, 44100)
    return song_dir / "context.flac", song_dir / f"target{gain}.flac"


def run_clip(tmp_path, context, target, settings=SETTINGS, upstream=None):
    status_in = tmp_path / "upstream.json"
    write_json(status_in, upstream or {"ok": True, "stage": "separate"})
    status = cl.clip("t", context, target, status_in, tmp_path / "w.parquet",
                     tmp_path / "clip.json", settings)
    assert read_json(tmp_path / "clip.json") == status
    return status, pq.read_table(tmp_path / "w.parquet").to_pylist()


def covered(intervals, grid):
    mask = np.zeros(grid.size, bool)
    for a, b in intervals:
        mask |= (grid >= a) & (grid < b)
    return mask


def test_selected_time_matches_the_solo_on_the_demo_corpus(tmp_path):
    """The default demo corpus (8 songs x 60 s): F1 of selected time vs the true solos."""
    tp = fp = fn = 0
    for i in range(1, 9):
        song = tmp_path / f"demo0{i}"
        truth = make_song(f"demo0{i}", song, seconds=60)
        status, windows = run_clip(song, *truth_stems(song))
        grid = np.arange(0, 60, 0.01)
        solo = covered(truth["solo_intervals"], grid)
        picked = covered([(w["start"], w["end"]) for w in windows], grid)
        tp += np.sum(solo & picked)
        fp += np.sum(~solo & picked)
        fn += np.sum(solo & ~picked)
        # the activity detector itself follows every solo section closely
        active = covered(status["active_intervals"], grid)
        assert np.mean(active == solo) > 0.98, (i, status["active_intervals"], truth)
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert f1 >= 0.95, f1


def test_thresholds_are_relative_to_the_track(tmp_path):
    """A quiet recording of the same solo gives the same windows (no fixed RMS threshold)."""
    make_song("demo01", tmp_path, seconds=30)
    context, loud = truth_stems(tmp_path)
    _, quiet = truth_stems(tmp_path, gain=0.05)  # -26 dB
    windows = [[(w["start"], w["end"]) for w in run_clip(tmp_path, context, t)[1]]
               for t in (loud, quiet)]
    assert windows[0] and windows[0] == windows[1]


def test_absolute_floor_rejects_near_silence(tmp_path):
    make_song("demo01", tmp_path, seconds=30)
    context, _ = truth_stems(tmp_path)
    _, hiss = truth_stems(tmp_path, gain=1e-4)  # -80 dB: below floor_db
    status, windows = run_clip(tmp_path, context, hiss)
    assert status["ok"] and status["windows"] == 0 and windows == []


def test_short_track_fails_with_a_reason(tmp_path):
    write_audio(tmp_path / "a.flac", np.full((2, 44100 * 4), 0.1), 44100)
    status, windows = run_clip(tmp_path, tmp_path / "a.flac", tmp_path / "a.flac")
    assert not status["ok"] and windows == []
    assert status["reason"] == "track is 4.0 s, shorter than one window (clip.seconds=10)"


def test_upstream_failure_passes_through(tmp_path):
    upstream = {"ok": False, "stage": "ingest", "reason": "HTTP Error 404: Not Found"}
    status, windows = run_clip(tmp_path, "missing.flac", "missing.flac", upstream=upstream)
    assert status == upstream | {"provenance": None} and windows == []


@pytest.mark.parametrize("gap, filled", [(3, True), (6, False)])
def test_bridge_fills_only_short_rests(gap, filled):
    mask = np.array([True] * 4 + [False] * gap + [True] * 4 + [False] * 3)
    out = cl.bridge(mask, max_gap=4)
    assert out[4:4 + gap].all() == filled
    assert not out[-3:].any()  # trailing silence is not between two active frames


def test_frame_rms_of_a_full_scale_sine_is_minus_3_db():
    t = np.arange(44100) / 44100
    sine = np.stack([np.sin(2 * np.pi * 441 * t)] * 2)
    db = cl.frame_rms_db(sine, 44100, 0.1, 0.05)
    assert db.shape == (19,)
    np.testing.assert_allclose(db, -3.0103, atol=0.01)


def test_frame_period_is_the_hop_in_whole_samples():
    assert cl.frame_period(44100, 0.05) == 0.05  # whole: times exactly as before
    assert cl.frame_period(22050, 0.05) == 1102 / 22050


def test_times_do_not_drift_when_the_hop_is_not_whole_samples(tmp_path):
    """22,050 Hz steps 0.05 s hops by 1,102 samples; timing frames by 0.05 s put a tone at
    600-635 s at 600.2-635.3 s."""
    rate, period = 22050, 1102 / 22050
    audio = np.zeros((1, 636 * rate), np.float32)
    t = np.arange(600 * rate, 635 * rate)
    audio[0, t] = 0.5 * np.sin(2 * np.pi * 441 * t / rate)
    write_audio(tmp_path / "a.flac", audio, rate)
    # frames as long as the hop: a frame's start is then within one period of any edge it holds
    settings = validate_config({"clip": {"frame_seconds": 0.05}})["clip"]
    status, windows = run_clip(tmp_path, tmp_path / "a.flac", tmp_path / "a.flac", settings)
    [[start, end]] = status["active_intervals"]
    assert abs(start - 600) <= period and abs(end - 635) <= period, (start, end)
    assert abs(status["active_seconds"] - 35) <= 2 * period
    # the windows wholly inside the tone, and only those
    assert [w["start"] for w in windows] == [600 + 2.5 * i for i in range(11)]
