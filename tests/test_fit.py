"""Fit figures (soloist.fit): known answers on constructed solos, the trackers on synthesized
ones, and the estimators on demo backings."""

from __future__ import annotations

import numpy as np
import pytest

from soloist import fit
from soloist.io import read_audio, read_json
from soloist.synth import NOTE_NAMES as NAMES
from soloist.synth import QUALITIES, make_song

TEMPO, SWING = 100, 0.64  # a beat of 0.6 s: 50 ms is a twelfth of it
BEAT = 60 / TEMPO
# two bars of C7, two of F7; (beat, length in beats, midi pitch): chord tones on the beats,
# scale tones on the swung eighths and the triplets
NOTES = [(0, SWING, 60), (SWING, 1 - SWING, 62), (1, 1, 64), (2, 1 / 3, 67), (2 + 1 / 3, 1 / 3, 69),
         (2 + 2 / 3, 1 / 3, 70), (3, 1, 72),
         # a rest of two beats: the band stops
         (6, 1, 67), (7, SWING, 64),
         (8, 1, 65), (9, SWING, 69), (9 + SWING, 1 - SWING, 70), (10, 1, 72), (11, 1, 75),
         (12, 2, 77)]  # fmt: skip


def truth() -> dict:
    notes = [[b * BEAT, (b + length * 0.9) * BEAT, p] for b, length, p in NOTES]
    return {"tempo_bpm": TEMPO, "swing": SWING, "key": "C",
            "chords": [[0.0, 8 * BEAT, "C7"], [8 * BEAT, 16 * BEAT, "F7"]],
            "solo_intervals": [[notes[0][0], notes[-1][1]]],
            "band_stops": [[notes[6][1], notes[7][0]]], "notes": notes}


def heard(notes: list[list[float]], seconds: float = 16 * BEAT) -> fit.Heard:
    """What perfect trackers would hear of ``notes`` [[start, end, midi]]."""
    frames = round(seconds / fit.HOP_S)
    midi = np.full(frames, np.nan)
    for start, end, pitch in notes:
        midi[round(start / fit.HOP_S):round(end / fit.HOP_S)] = pitch
    return fit.Heard(midi, ~np.isnan(midi), np.array([n[0] for n in notes]))


def expected_in_scale(notes: list[list[float]], shift: int) -> float:
    """The share of sounding time whose pitch, ``shift`` semitones up, is in its chord's
    scale, by set arithmetic on the notes."""
    scale = {root: {(root + i) % 12 for i in QUALITIES["7"][1]} for root in (0, 5)}
    inside = sum(end - start for start, end, p in notes
                 if (p + shift) % 12 in scale[0 if start < 8 * BEAT else 5])
    return inside / sum(end - start for start, end, _ in notes)


def test_true_notes_score_one_and_the_controls_what_scale_and_grid_imply():
    t = truth()
    song = fit.Truth.of(t)
    true = heard(t["notes"])
    scores = fit.truth_scores(true, song, 0.0)
    assert scores["in_scale"] == 1.0 and scores["on_grid"] == 1.0
    assert scores["chord_tones"] == 1.0 and scores["with_band"] == pytest.approx(1.0, abs=0.01)
    floors = {name: fit.truth_scores(h, song, 0.0)
              for name, h in fit.controls(true, heard([]), BEAT).items()}
    assert floors["real"] == scores
    # a tritone up: the notes whose pitch class lands in the scale again
    assert floors["tritone"]["in_scale"] == pytest.approx(expected_in_scale(t["notes"], 6),
                                                          abs=0.01)
    assert floors["tritone"]["in_scale"] < 0.5 and floors["tritone"]["on_grid"] == 1.0
    # half a beat late: at 100 bpm every onset is 100 ms or more from the grid
    assert floors["half_beat"]["on_grid"] == 0.0
    assert floors["half_beat"]["in_scale"] > 0.9  # the chords change only every two bars
    # nothing played: with the band never
    assert floors["other_song"]["with_band"] == 0.0 and floors["other_song"]["on_grid"] == 0.0
    silent = fit.hear(np.zeros(24000 * 3, np.float32), 24000)
    assert not silent.playing.any() and len(silent.onsets) == 0
    assert fit.truth_scores(silent, song, 0.0)["with_band"] == 0.0


def test_the_band_stop_counts_against_a_solo_that_plays_through_it():
    t = truth()
    through = [[t["notes"][0][0], t["notes"][-1][1], 60]]  # one long note from first to last
    band = fit.truth_scores(heard(through), fit.Truth.of(t), 0.0)["with_band"]
    rest = t["band_stops"][0][1] - t["band_stops"][0][0]
    active = through[0][1] - through[0][0]
    assert band == pytest.approx(2 * (active - rest) / (2 * active - rest), abs=0.01)


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    folder = tmp_path_factory.mktemp("song")
    make_song("fit01", folder, seconds=24, seed=3)
    return folder


def test_the_trackers_hear_a_synthesized_solo_as_its_true_notes(song):
    t = read_json(song / "truth.json")
    audio, rate = read_audio(song / "stems/other.flac")
    start = 6.0
    solo = audio.mean(0)[round(start * rate):round((start + 12) * rate)]
    true = fit.hear(solo, rate)
    # the pitch track follows the notes: inside each (past its scoop), within 50 cents
    times = start + np.arange(len(true.midi)) * fit.HOP_S
    inside = np.full(len(times), np.nan)
    for a, b, p in t["notes"]:
        inside[(times >= a + 0.05) & (times < b - 0.03)] = p
    both = ~np.isnan(inside)
    assert both.sum() > 200
    assert np.mean(np.abs(true.midi[both] - inside[both]) < 0.5) > 0.97
    scores = fit.truth_scores(true, fit.Truth.of(t), start)
    assert scores["in_scale"] > 0.95 and scores["on_grid"] > 0.9 and scores["with_band"] > 0.95
    floors = {k: fit.truth_scores(h, fit.Truth.of(t), start)
              for k, h in fit.controls(true, true.shifted(3.0), 60 / t["tempo_bpm"]).items()}
    assert floors["tritone"]["in_scale"] < scores["in_scale"] - 0.4
    assert floors["half_beat"]["on_grid"] < scores["on_grid"] - 0.4
    assert floors["other_song"]["with_band"] < scores["with_band"]


def test_the_estimators_find_the_key_and_beats_of_demo_backings(tmp_path):
    """On six demo backings, the tolerances README states: the estimated key's scale shares
    at least 6 of its 7 notes with the true key's (the key, a fifth off or the relative
    minor) on five of them, and the beats' F-measure (70 ms) is at least 0.85 on average."""
    shared, beats = [], []
    for i in range(6):
        make_song(f"est{i}", tmp_path / str(i), seconds=20, seed=0)
        t = read_json(tmp_path / str(i) / "truth.json")
        stems = [read_audio(tmp_path / str(i) / f"stems/{s}.flac") for s in ("drums", "bass",
                                                                             "piano")]
        backing, rate = sum(a for a, _ in stems).mean(0), stems[0][1]
        estimate = fit.estimate(backing[3 * rate:], rate)
        major = {(NAMES.index(t["key"]) + i) % 12 for i in (0, 2, 4, 5, 7, 9, 11)}
        shared.append(len(major & set(np.flatnonzero(estimate.scale))))
        beats.append(fit.agreement(estimate, t, 3.0, 17.0)["beat_f"])
    print(f"notes of the true scale in the estimated one {shared}, beat F {beats}")
    assert sum(n >= 6 for n in shared) >= 5 and np.mean(beats) >= 0.85
