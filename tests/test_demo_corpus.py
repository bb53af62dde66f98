"""The demo songs must be deterministic and their truth.json must describe the audio."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from soloist.io import read_audio, read_json
from soloist.synth import _plan, _sax_line, _solo_sections, make_song

SECONDS = 25.0
SR = 44100
STEMS = ("drums", "bass", "piano", "other")
NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
# written out here rather than imported, so a wrong table in the module fails these tests
SCALES = {"maj7": {0, 2, 4, 5, 7, 9, 11}, "m7": {0, 2, 3, 5, 7, 9, 10}, "7": {0, 2, 4, 5, 7, 9, 10}}
TONES = {"maj7": {0, 4, 7, 11}, "m7": {0, 3, 7, 10}, "7": {0, 4, 7, 10}}
FORMS = ("blues", "ii-V-I", "rhythm", "turnaround", "modal")
# the tonic chord each form has somewhere, as (semitones above the key, quality)
TONICS = {"blues": (0, "7"), "modal": (2, "m7")}
# (name, seed, variety): classic songs of slow and fast tempos and both their forms, and
# songs of demo.variety in other forms, one nearly straight (the fixture checks this)
SONGS = [("alpha", 0, False), ("beta", 0, False), ("alpha", 1, False), ("beta", 1, False),
         ("alpha", 2, True), ("beta", 1, True)]


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """[(dir, truth, {stem: audio}, mixture)] for a few songs."""
    out = []
    for name, seed, variety in SONGS:
        d = tmp_path_factory.mktemp(f"{name}{seed}")
        truth = make_song(name, d, seconds=SECONDS, seed=seed, sample_rate=SR, variety=variety)
        stems = {s: read_audio(d / "stems" / f"{s}.flac")[0] for s in STEMS}
        out.append((d, truth, stems, read_audio(d / "mixture.flac")[0]))
    assert {t["form"] for _, t, _, _ in out[:4]} == {"blues", "ii-V-I"}
    assert {t["form"] for _, t, _, _ in out[4:]} == {"modal", "turnaround"}
    assert min(t["swing"] for _, t, _, _ in out) < 0.55
    assert (
        min(t["tempo_bpm"] for _, t, _, _ in out) < 120 < max(t["tempo_bpm"] for _, t, _, _ in out)
    )
    return out


def _files(d):
    return sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())


def _rms_db(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else -np.inf


def _chord_at(truth, t):
    for start, end, name in truth["chords"]:
        if start <= t < end:
            for quality in ("maj7", "m7", "7"):  # longest suffix first
                if name.endswith(quality):
                    return NAMES.index(name[: -len(quality)]), quality
    raise AssertionError(f"no chord at {t}")


def test_same_args_give_identical_files(songs, tmp_path):
    d, truth, _, _ = songs[0]
    again = make_song("alpha", tmp_path, seconds=SECONDS, seed=0, sample_rate=SR)
    assert again == truth == read_json(d / "truth.json")
    assert _files(d) == _files(tmp_path) != []
    for f in _files(d):
        assert (d / f).read_bytes() == (tmp_path / f).read_bytes(), f


def test_name_and_seed_change_the_song(songs):
    mixes = [mix for _, _, _, mix in songs]
    for i in range(len(mixes)):
        for j in range(i + 1, len(mixes)):
            assert not np.allclose(mixes[i], mixes[j], atol=1e-3)


def test_files_are_stereo_with_exact_length(songs):
    for d, truth, stems, mix in songs:
        assert truth["sample_rate"] == SR and truth["seconds"] == SECONDS
        assert read_audio(d / "mixture.flac")[1] == SR
        for audio in [mix, *stems.values()]:
            assert audio.shape == (2, round(SECONDS * SR))
        assert truth["stems"] == {
            "other": "saxophone",
            "drums": "drums",
            "bass": "bass",
            "piano": "piano",
        }


def test_stems_sum_to_mixture(songs):
    for _, _, stems, mix in songs:
        total = sum(stems.values())
        # five 16-bit roundings, plus a 1/32768 scale difference between write and read
        assert np.abs(total - mix).max() < 8 / 32768
        assert np.abs(mix).max() <= 0.9 + 1e-4
        assert np.abs(mix).max() > 0.5  # normalized, not silent
        for s in ("drums", "bass", "piano"):
            assert _rms_db(stems[s]) > -40, s


def test_song_parameters_in_range(songs):
    forms = set()
    for _, truth, _, _ in songs:
        assert 90 <= truth["tempo_bpm"] <= 230 and 0.5 <= truth["swing"] <= 0.7
        assert truth["key"] in NAMES
        assert truth["form"] in FORMS
        assert set(truth["timbres"]) == {"sax", "bass", "piano"}
        forms.add(truth["form"])
        chords = truth["chords"]
        assert chords[0][0] == 0 and chords[-1][1] == SECONDS
        for (_, end, _), (start, _, _) in zip(chords, chords[1:], strict=False):
            assert start == end
        degree, quality = TONICS.get(truth["form"], (0, "maj7"))
        tonic = ((NAMES.index(truth["key"]) + degree) % 12, quality)
        assert tonic in [_chord_at(truth, start) for start, _, _ in chords]


def test_sax_only_inside_solo_intervals(songs):
    for _, truth, stems, _ in songs:
        sax = stems["other"]
        intervals = truth["solo_intervals"]
        assert intervals, truth["name"]
        outside = np.ones(sax.shape[1], dtype=bool)
        for start, end in intervals:
            assert 0 <= start < end <= SECONDS
            inside = sax[:, round(start * SR) : round(end * SR)]
            assert _rms_db(inside) > -30
            outside[max(0, round(start * SR) - 10) : round(end * SR) + 10] = False
        assert _rms_db(sax[:, outside]) < -60


def test_no_solo_in_intro_or_outro_and_sections_apart(songs):
    for _, truth, _, _ in songs:
        bar = 240 / truth["tempo_bpm"]
        intervals = truth["solo_intervals"]
        assert intervals[0][0] >= 2 * bar - 1e-3
        assert intervals[-1][1] <= SECONDS - 2 * bar + 1e-3
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert start - end > 2.0  # a backing-only break of 2+ bars


def test_notes_are_monophonic_phrases_inside_sections(songs):
    for _, truth, _, _ in songs:
        notes = truth["notes"]
        assert len(notes) > 10
        for start, end, pitch in notes:
            assert start < end and 40 <= pitch <= 90
            assert sum(s <= start and end <= e + 1e-4 for s, e in truth["solo_intervals"]) == 1
        for (s0, e0, _), (s1, _, _) in zip(notes, notes[1:], strict=False):
            assert e0 <= s1  # one note at a time
            same_section = any(s <= s0 and s1 <= e for s, e in truth["solo_intervals"])
            if same_section:
                assert s1 - e0 < 2.0  # rests inside a solo stay short


def test_the_band_stops_exactly_when_the_sax_breathes(songs):
    """Each rest of 0.9 beat or more inside a solo is a stop: the band and the sax are both
    silent in it; everywhere else in the solos the band plays."""
    for _, truth, stems, _ in songs:
        beat = 60 / truth["tempo_bpm"]
        notes = truth["notes"]
        rests = [[e0, s1] for (_, e0, _), (s1, _, _) in zip(notes, notes[1:], strict=False)
                 if s1 - e0 >= 0.9 * beat - 1e-3
                 and any(s <= e0 and s1 <= e for s, e in truth["solo_intervals"])]
        assert rests and np.allclose(truth["band_stops"], rests, atol=1e-3), truth["name"]
        backing = stems["drums"] + stems["bass"] + stems["piano"]
        playing = np.zeros(backing.shape[1], dtype=bool)
        for start, end in truth["solo_intervals"]:
            playing[round(start * SR):round(end * SR)] = True
        for start, end in truth["band_stops"]:
            a, b = round(start * SR), round(end * SR)
            inner = slice(a + 250, b - 250)  # the ramps, and times rounded to 0.1 ms
            assert not backing[:, inner].any() and not stems["other"][:, inner].any()
            playing[a - 10:b + 10] = False
        frames = np.abs(backing[:, :backing.shape[1] // 441 * 441]).max(0).reshape(-1, 441)
        assert frames.max(1)[playing[::441][:len(frames)]].min() > 0  # no silent 10 ms


def test_sax_level_matches_backing(songs):
    for _, truth, stems, _ in songs:
        backing = stems["drums"] + stems["bass"] + stems["piano"]
        mask = np.zeros(backing.shape[1], dtype=bool)
        for start, end in truth["solo_intervals"]:
            mask[round(start * SR) : round(end * SR)] = True
        diff = _rms_db(stems["other"][:, mask]) - _rms_db(backing[:, mask])
        assert abs(diff) <= 4.0, (truth["name"], diff)


def test_sax_follows_the_harmony(songs):
    for _, truth, _, _ in songs:
        in_scale = on_beat = on_beat_tone = 0
        for start, _, pitch in truth["notes"]:
            root, quality = _chord_at(truth, start)
            pc = (pitch - root) % 12
            in_scale += pc in SCALES[quality]
            beats = start * truth["tempo_bpm"] / 60
            if abs(beats - round(beats)) < 0.01:
                on_beat += 1
                on_beat_tone += pc in TONES[quality]
        assert in_scale >= 0.9 * len(truth["notes"])
        assert on_beat_tone >= 0.6 * on_beat > 0  # beats land on chord tones


def test_sax_follows_the_swing(songs):
    """Onsets sit on the beat, on triplets or on the song's swung offbeat (its truth says
    where: 0.6-0.68 of a beat in the classic songs, 0.5 (straight) to 0.7 with variety)."""
    for _, truth, _, _ in songs:
        beat = 60 / truth["tempo_bpm"]
        offbeats = []
        for start, _, _ in truth["notes"]:
            frac = (start / beat) % 1
            tol = 0.002 / beat
            assert frac < tol or frac > 1 - tol or min(
                abs(frac - x) for x in (1 / 3, 2 / 3, truth["swing"])) < tol, (frac, truth)
            if abs(frac - truth["swing"]) < tol:
                offbeats.append(frac)
        assert offbeats  # the swung eighths are there


def test_most_songs_have_two_solo_sections():
    counts = [len(_solo_sections(np.random.default_rng(i), n_bars=30)) for i in range(200)]
    assert set(counts) <= {1, 2}
    assert 0.7 <= counts.count(2) / len(counts) < 1.0
    for i in range(50):
        for n_bars in (4, 8, 12, 40):
            sections = _solo_sections(np.random.default_rng(i), n_bars)
            for start, end in sections:
                assert 2 <= start < end <= n_bars - 2
            for (_, end), (start, _) in zip(sections, sections[1:], strict=False):
                assert 2 <= start - end <= 4


def test_rests_stay_short_at_the_slowest_tempo():
    """At 100 BPM four beats of rest would be 2.4 s: the line must shorten them."""
    for i in range(20):
        rng = np.random.default_rng(i)
        song = dataclasses.replace(_plan(rng, 120.0), tempo=100, beat_s=0.6)
        (notes,) = _sax_line(rng, song, [(2, 40)])
        assert len(notes) > 50
        for (t0, d0, _, _), (t1, _, _, _) in zip(notes, notes[1:], strict=False):
            assert 0 < t1 - (t0 + d0) < 2.0
