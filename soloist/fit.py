"""Fit: does a solo fit its backing? Measured from audio, against a demo song's truth or,
for any backing, against what trackers estimate of it.

What is heard of a solo (``hear``): its pitch every 10 ms (torchcrepe's ``tiny`` model,
whose weights ship in its wheel: BENCHMARKS.md says why it and not ``librosa.pyin``), where
it plays (frame level), and its note onsets (librosa's onset detector).

Against a demo song's ``truth.json`` (``truth_scores``):
- ``in_scale``: the share of voiced time whose pitch class is in the scale of the chord
  sounding then (the synthesizer's own chord-scale table, ``synth.QUALITIES``);
- ``chord_tones``: the same just after each beat, chord tones only;
- ``on_grid``: the share of onsets on the song's grid (each beat, its swung eighth and its
  triplets), within 50 ms or, above 100 bpm, a twelfth of a beat;
- ``with_band``: the F1 of "the solo plays" against the truth's (it rests where the band
  stops), frame by frame.

For any backing (``free_scores``): the key and the beats are estimated from the backing
(librosa: chroma against Krumhansl's key profiles, its beat tracker), and ``in_key`` and
``on_beat`` are scored against them (beats and their triplets, within 50 ms).

A figure means something only between its controls (``controls``): the true solo (the
ceiling), and as floors the true solo a tritone up, half a beat late, and another song's
solo. The floors transform what was heard of the true solo (its pitch track and onsets),
which is what a transposed or delayed recording gives the trackers, without the artifacts
of resynthesis.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from soloist.synth import NOTE_NAMES, QUALITIES

HOP_S = 0.01  # the pitch track's and the activity's frame
PITCH_RATE = 16_000  # CREPE's
FMIN, FMAX = 100.0, 1000.0  # Hz: a tenor saxophone sounds 155-700 Hz
VOICED = 0.5  # CREPE periodicity above which a frame is pitched (BENCHMARKS.md)
# an onset this near a grid point is on it: 50 ms, or a twelfth of a beat above 100 bpm,
# where 50 ms around four points a beat would cover most of it (a solo half a beat late
# scored 1.0 at 189 bpm with 50 ms)
TOLERANCE_S, TOLERANCE_BEATS = 0.05, 1 / 12
FLOOR_DB, RELATIVE_DB = -50.0, 30.0  # playing: above both the floor and loud - 30 dB
# grid points within a beat: the beat, its triplets and its swung eighth (the song's own)
TRIPLETS = (0.0, 1 / 3, 2 / 3)
# Krumhansl-Kessler key profiles, from C
MAJOR_PROFILE = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
MINOR_PROFILE = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
MAJOR_SCALE, MINOR_SCALE = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)


@dataclass(frozen=True)
class Heard:
    """What the trackers hear of a solo: ``midi`` [F] fractional MIDI pitch per 10 ms frame
    (nan where unvoiced), ``playing`` [F] bool, ``onsets`` [N] seconds."""

    midi: np.ndarray
    playing: np.ndarray
    onsets: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.midi) * HOP_S

    def transposed(self, semitones: float) -> Heard:
        return replace(self, midi=self.midi + semitones)

    def shifted(self, seconds: float) -> Heard:
        """The same solo ``seconds`` later, cut at the same end (the start is silent)."""
        n = min(len(self.midi), round(seconds / HOP_S))
        midi = np.concatenate([np.full(n, np.nan), self.midi[:len(self.midi) - n]])
        playing = np.concatenate([np.zeros(n, bool), self.playing[:len(self.playing) - n]])
        onsets = self.onsets + seconds
        return Heard(midi, playing, onsets[onsets < self.seconds])


def hear(audio: np.ndarray, rate: int, device: str = "cpu") -> Heard:
    """Pitch (CREPE on ``device``), playing and onsets of a mono solo [N] at ``rate``."""
    import librosa

    audio = np.asarray(audio, np.float32)
    frames = max(1, int(np.ceil(len(audio) / rate / HOP_S)))
    playing = _playing(audio, rate, frames)
    midi = _pitch(audio, rate, frames, device)
    midi[~playing] = np.nan
    hop = round(HOP_S * rate)
    onsets = librosa.onset.onset_detect(y=audio, sr=rate, hop_length=hop, units="time",
                                        backtrack=True) if playing.any() else np.zeros(0)
    return Heard(midi, playing, np.asarray(onsets, np.float64))


def _pitch(audio: np.ndarray, rate: int, frames: int, device: str) -> np.ndarray:
    """[frames] MIDI pitch, nan where CREPE hears no periodicity."""
    import librosa
    import torch
    import torchcrepe

    x = librosa.resample(audio, orig_sr=rate, target_sr=PITCH_RATE) if rate != PITCH_RATE \
        else audio
    hz, periodicity = torchcrepe.predict(torch.from_numpy(x)[None], PITCH_RATE,
                                         round(HOP_S * PITCH_RATE), FMIN, FMAX, "tiny",
                                         return_periodicity=True, batch_size=512,
                                         device=device)
    periodicity = torchcrepe.filter.median(periodicity.cpu(), 3)[0].numpy()
    midi = np.where(periodicity > VOICED, librosa.hz_to_midi(hz[0].cpu().numpy()), np.nan)
    return _fit_length(midi, frames, np.nan)


def _playing(audio: np.ndarray, rate: int, frames: int) -> np.ndarray:
    """[frames] bool: the 10 ms frames louder than the floor and than the loud part - 30 dB."""
    hop = round(HOP_S * rate)
    padded = np.pad(audio, (0, frames * hop - len(audio)))[:frames * hop]
    db = 10 * np.log10(np.mean(padded.reshape(frames, hop) ** 2, axis=1) + 1e-12)
    loud = np.percentile(db, 95)
    return db > max(FLOOR_DB, loud - RELATIVE_DB)


def _fit_length(x: np.ndarray, n: int, fill: float) -> np.ndarray:
    return np.concatenate([x[:n], np.full(max(0, n - len(x)), fill)])


def pitch_agreement(heard: Heard, reference: Heard) -> float:
    """The share of the frames both voice whose pitches are within 50 cents: how well a
    round trip keeps the pitch of its input (``reference``)."""
    n = min(len(heard.midi), len(reference.midi))
    a, b = heard.midi[:n], reference.midi[:n]
    both = ~np.isnan(a) & ~np.isnan(b)
    return _share(np.abs(a[both] - b[both]) < 0.5)


# ----------------------------------------------------------------------------- the truth


@dataclass(frozen=True)
class Truth:
    """A demo song's truth, as the figures read it (seconds from the song's start)."""

    chords: tuple[tuple[float, float, int, str], ...]  # (start, end, root pitch class, quality)
    beat_s: float
    swing: float  # the swung eighth's place within a beat
    active: tuple[tuple[float, float], ...]  # when the solo plays: its notes, rests < 0.9 beat

    @classmethod
    def of(cls, truth: dict) -> Truth:
        """From a ``truth.json``."""
        chords = tuple((s, e, *_chord(name)) for s, e, name in truth["chords"])
        beat_s = 60.0 / truth["tempo_bpm"]
        stops = truth["band_stops"]
        active = []
        for a, b in truth["solo_intervals"]:
            inside = sorted((s, e) for s, e in stops if a <= s and e <= b)
            edges = [a] + [x for s, e in inside for x in (s, e)] + [b]
            active += [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]
        return cls(chords, beat_s, truth["swing"], tuple(active))

    def chord_at(self, t: np.ndarray) -> np.ndarray:
        """Index of the chord sounding at each time ``t`` [F] (the last one after the end)."""
        starts = np.array([c[0] for c in self.chords])
        return np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(starts) - 1)

    def pitch_classes(self, which: int) -> tuple[np.ndarray, ...]:
        """Per chord, a [12] bool of its scale's (0) or its chord tones' (1) pitch classes."""
        return _pitch_classes(self.chords, which)

    def grid(self, start: float, end: float) -> np.ndarray:
        """Grid points in [start - beat, end + beat]: beats, triplets and swung eighths."""
        first, last = int(start // self.beat_s) - 1, int(end // self.beat_s) + 2
        offsets = np.array(sorted({*TRIPLETS, self.swing}))
        return ((np.arange(first, last)[:, None] + offsets) * self.beat_s).ravel()

    def playing(self, start: float, frames: int) -> np.ndarray:
        """[frames] bool: whether the true solo plays in each frame from ``start``."""
        t = start + np.arange(frames) * HOP_S
        return np.any([(a <= t) & (t < b) for a, b in self.active] or [np.zeros(frames, bool)],
                      axis=0)


@functools.lru_cache(maxsize=64)
def _pitch_classes(chords: tuple, which: int) -> tuple[np.ndarray, ...]:
    out = []
    for _, _, root, quality in chords:
        mask = np.zeros(12, bool)
        mask[[(root + i) % 12 for i in QUALITIES[quality][1 - which]]] = True
        out.append(mask)
    return tuple(out)


def _chord(name: str) -> tuple[int, str]:
    """(root pitch class, quality) of a chord name such as ``Dbm7``."""
    root = max((n for n in NOTE_NAMES if name.startswith(n)), key=len)
    return NOTE_NAMES.index(root), name[len(root):]


def truth_scores(heard: Heard, truth: Truth, start: float) -> dict[str, float]:
    """in_scale, chord_tones, on_grid and with_band of a solo heard from ``start`` seconds
    into its song."""
    t = start + np.arange(len(heard.midi)) * HOP_S
    voiced = ~np.isnan(heard.midi)
    pcs = np.round(heard.midi[voiced]).astype(int) % 12
    chord = truth.chord_at(t[voiced])
    scales, tones = truth.pitch_classes(0), truth.pitch_classes(1)
    in_scale = np.array([scales[c][p] for c, p in zip(chord, pcs, strict=True)])
    # just after each beat: 20-80 ms, past the attack's scoop
    beat_phase = (t[voiced] / truth.beat_s) % 1.0 * truth.beat_s
    on_beat = (beat_phase >= 0.02) & (beat_phase < 0.08)
    chord_tone = np.array([tones[c][p] for c, p in zip(chord[on_beat], pcs[on_beat],
                                                        strict=True)])
    onsets = start + heard.onsets
    grid = truth.grid(start, start + heard.seconds)
    return {"in_scale": _share(in_scale), "chord_tones": _share(chord_tone),
            "on_grid": _share(_near(onsets, grid, truth.beat_s)),
            "with_band": _f1(_bridged(heard.playing, 0.9 * truth.beat_s),
                             truth.playing(start, len(heard.midi)))}


# ----------------------------------------------------------------------------- any backing


@dataclass(frozen=True)
class Estimate:
    """What the trackers estimate of a backing: its key and its beats (seconds)."""

    tonic: int
    minor: bool
    beats: np.ndarray

    @property
    def key(self) -> str:
        """In mir_eval's spelling, e.g. ``Eb major``."""
        return f"{NOTE_NAMES[self.tonic]} {'minor' if self.minor else 'major'}"

    @property
    def beat_s(self) -> float:
        """The median beat, s (0.5 when the tracker found fewer than two beats)."""
        return float(np.median(np.diff(self.beats))) if len(self.beats) > 1 else 0.5

    @property
    def scale(self) -> np.ndarray:
        mask = np.zeros(12, bool)
        mask[[(self.tonic + i) % 12 for i in (MINOR_SCALE if self.minor else MAJOR_SCALE)]] = 1
        return mask

    def grid(self) -> np.ndarray:
        """Beats and their triplets (a swung eighth falls near the last): not their halves,
        where a solo half a beat late would land."""
        if len(self.beats) < 2:
            return self.beats
        step = np.diff(self.beats)
        parts = [self.beats] + [self.beats[:-1] + f * step for f in TRIPLETS[1:]]
        return np.sort(np.concatenate(parts))


def estimate(backing: np.ndarray, rate: int) -> Estimate:
    """Key (Krumhansl-Kessler profiles against the mean CQT chroma) and beats of a mono
    backing [N] at ``rate``."""
    import librosa

    backing = np.asarray(backing, np.float32)
    if rate > 22_050:  # enough for chroma and onsets, and twice as fast as 44.1 kHz
        backing, rate = librosa.resample(backing, orig_sr=rate, target_sr=22_050), 22_050
    chroma = librosa.feature.chroma_cqt(y=backing, sr=rate).mean(axis=1)
    best = max(((float(np.corrcoef(chroma, np.roll(profile, tonic))[0, 1]), tonic, minor)
                for minor, profile in enumerate((MAJOR_PROFILE, MINOR_PROFILE))
                for tonic in range(12)))
    # a tight tempo around 160 bpm: on the demo's swing (100-220 bpm) beat F 0.93 against
    # librosa's defaults' 0.83 (BENCHMARKS.md)
    _, beats = librosa.beat.beat_track(y=backing, sr=rate, units="time", tightness=400,
                                       start_bpm=160)
    return Estimate(best[1], bool(best[2]), np.asarray(beats, np.float64))


def free_scores(heard: Heard, backing: Estimate) -> dict[str, float]:
    """in_key and on_beat of a solo over a backing whose key and beats were estimated."""
    voiced = heard.midi[~np.isnan(heard.midi)]
    pcs = np.round(voiced).astype(int) % 12
    return {"in_key": _share(backing.scale[pcs]),
            # 50 ms: estimated beats wander by tens of ms, a twelfth of a beat missed the
            # true solo's swung eighths
            "on_beat": _share(_near(heard.onsets, backing.grid(), math.inf))}


def agreement(backing: Estimate, truth: dict, start: float, seconds: float) -> dict:
    """How well the estimates of a demo backing's window agree with its truth: mir_eval's
    key score (1 right, 0.5 a fifth off, 0.3 relative minor, ...) and beat F-measure."""
    import mir_eval

    true_key = f"{truth['key']} major"  # the demo's forms are major (blues: its dominant)
    beat_s = 60.0 / truth["tempo_bpm"]
    true_beats = np.arange(np.ceil(start / beat_s), (start + seconds) / beat_s) * beat_s - start
    return {"key": backing.key, "true_key": true_key,
            "key_score": float(mir_eval.key.weighted_score(true_key, backing.key)),
            "beat_f": float(mir_eval.beat.f_measure(true_beats, backing.beats,
                                                    f_measure_threshold=0.07))}


def backing_fit(solo: np.ndarray, backing: np.ndarray, rate: int, device: str = "cpu"
                ) -> dict:
    """The truth-free figures of a mono ``solo`` over its mono ``backing`` [N] at ``rate``,
    beside their floors: the same solo a tritone up and half a (estimated) beat late.
    The pitch tracker runs on ``device``."""
    backing_estimate = estimate(backing, rate)
    heard = hear(solo, rate, device)
    beat_s = backing_estimate.beat_s
    return {"key": backing_estimate.key, "tempo_bpm": round(60 / beat_s, 1),
            "generated": free_scores(heard, backing_estimate),
            "tritone": free_scores(heard.transposed(6), backing_estimate),
            "half_beat": free_scores(heard.shifted(beat_s / 2), backing_estimate)}


def example_fit(generated: Heard, real: Heard, other: Heard, backing: np.ndarray, rate: int,
                truth: dict | None, start: float) -> dict:
    """An evaluated example's figures: ``free`` for the generated solo, the real one and the
    floors (``controls``; ``other``: another song's real solo) against the key and beats
    estimated from its mono ``backing``; with the song's ``truth`` (the window starting at
    ``start`` s) also ``truth``'s figures and how the estimates agree with it."""
    backing_estimate = estimate(backing, rate)
    beat_s = 60 / truth["tempo_bpm"] if truth else backing_estimate.beat_s
    solos = {"generated": generated} | controls(real, other, beat_s)
    out = {"free": {name: free_scores(h, backing_estimate) for name, h in solos.items()}}
    if truth:
        song = Truth.of(truth)
        out["truth"] = {name: truth_scores(h, song, start) for name, h in solos.items()}
        out["estimate"] = agreement(backing_estimate, truth, start, len(backing) / rate)
    return out


# ----------------------------------------------------------------------------- controls


def controls(real: Heard, other: Heard, beat_s: float) -> dict[str, Heard]:
    """The ceiling and the floors of a solo's figures: the true solo (as heard), a tritone
    up, half a beat late, and another song's solo (``other``, cut to the same length)."""
    n = len(real.midi)
    other = Heard(_fit_length(other.midi, n, np.nan),
                  _fit_length(other.playing, n, False).astype(bool),
                  other.onsets[other.onsets < real.seconds])
    return {"real": real, "tritone": real.transposed(6), "half_beat": real.shifted(beat_s / 2),
            "other_song": other}


def summary(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The mean of each figure of each solo (generated, real, the floors) over examples."""
    names = {name for row in rows for name in row}
    return {name: {figure: float(np.mean([r[name][figure] for r in rows if name in r]))
                   for figure in rows[0][next(iter(rows[0]))]}
            for name in sorted(names)}


def _share(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else 0.0


def _near(times: np.ndarray, grid: np.ndarray, beat_s: float) -> np.ndarray:
    """[N] bool: whether each time is on a grid point (within the tolerance at ``beat_s``)."""
    if not len(times) or not len(grid):
        return np.zeros(len(times), bool)
    grid = np.sort(grid)
    i = np.clip(np.searchsorted(grid, times), 1, len(grid) - 1)
    distance = np.minimum(np.abs(times - grid[i - 1]), np.abs(times - grid[i]))
    return distance <= min(TOLERANCE_S, TOLERANCE_BEATS * beat_s) + 1e-9


def _bridged(playing: np.ndarray, seconds: float) -> np.ndarray:
    """``playing`` with its gaps shorter than ``seconds`` between two played frames filled."""
    out, idx = playing.copy(), np.flatnonzero(playing)
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        if 1 < b - a <= seconds / HOP_S:
            out[a:b] = True
    return out


def _f1(estimated: np.ndarray, true: np.ndarray) -> float:
    hits = float(np.sum(estimated & true))
    if not hits:
        return 0.0
    precision, recall = hits / estimated.sum(), hits / true.sum()
    return 2 * precision * recall / (precision + recall)
