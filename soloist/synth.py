"""The demo synthesizer: jazz-quartet songs with a known saxophone solo.

``make_song`` renders drums, walking bass, piano comping and a sax solo that follows the
chords and the swing of the backing, in pure numpy, and writes the stems, their mixture and
a ``truth.json`` (chords, solo sections, sax notes, band stops). The pipeline and the models
get songs with a known answer without downloading any music, and the same (seed, name)
always gives byte-identical files. The demo_corpus rule writes its songs with it, and
fetch_weights gives a random-init codec its codebooks from one of them.

The band stops whenever the soloist breathes for a beat or more inside a solo, and comes
back with them. So the backing says when the solo plays, frame by frame: a relation that
even tokens of a random-init codec keep, so a test can tell whether a model listens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from soloist.io import write_audio, write_json

NOTE_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
# quality -> (chord tones, scale) in semitones above the root; the scale is the one a
# soloist thinks in: major over maj7, dorian over m7, mixolydian over 7.
QUALITIES = {
    "maj7": ((0, 4, 7, 11), (0, 2, 4, 5, 7, 9, 11)),
    "m7": ((0, 3, 7, 10), (0, 2, 3, 5, 7, 9, 10)),
    "7": ((0, 4, 7, 10), (0, 2, 4, 5, 7, 9, 10)),
}
# one chord per bar as (semitones above the key, quality)
FORMS = {
    "blues": (
        (0, "7"), (5, "7"), (0, "7"), (0, "7"), (5, "7"), (5, "7"),
        (0, "7"), (0, "7"), (7, "7"), (5, "7"), (0, "7"), (7, "7"),
    ),
    "ii-V-I": (
        (2, "m7"), (7, "7"), (0, "maj7"), (9, "7"), (2, "m7"), (7, "7"), (0, "maj7"), (0, "maj7"),
    ),
    "rhythm": ((0, "maj7"), (9, "7"), (2, "m7"), (7, "7")),  # I vi ii V
    "turnaround": (
        (0, "maj7"), (0, "maj7"), (5, "7"), (5, "7"), (4, "m7"), (9, "7"), (2, "m7"), (7, "7"),
    ),
    # dorian on the second degree, a half step up and back: the key's scale, then another
    "modal": ((2, "m7"),) * 8 + ((3, "m7"),) * 4 + ((2, "m7"),) * 4,
}  # fmt: skip
# What a song may draw: the classic demo songs (the default corpus, which the tests and the
# README's figures rest on), or with ``variety`` (demo.variety, for corpora to learn from)
# every form above, wider tempi and swings, other timbres and levels. The classic songs draw
# no timbre, so that their audio stays what it was.
CLASSIC = {"forms": ("blues", "ii-V-I"), "tempi": (100, 221), "swing": (0.6, 0.68),
           "level_db": 1.5, "sax_db": 2.5}
VARIETY = {"forms": tuple(FORMS), "tempi": (90, 231), "swing": (0.5, 0.7), "level_db": 4.0,
           "sax_db": 4.0}  # tempi [low, high) bpm; swing: 0.5 straight, 2/3 triplets
TIMBRES = 3  # per instrument, with variety: wavetables of other brightness and formants
# rootless piano voicings: 3rd and 7th plus colour tones
VOICINGS = {"maj7": (4, 7, 11, 14), "m7": (3, 7, 10, 14), "7": (4, 9, 10, 14)}
STEMS = {"other": "saxophone", "drums": "drums", "bass": "bass", "piano": "piano"}
SAX_RANGE = (51, 77)  # tenor sax, sounding Eb3..F5
BASS_RANGE = (28, 50)  # E1..D3
PIANO_CENTER = 62
MAX_REST_S = 2.0  # rests inside a solo section stay below this; breaks between sections exceed it
PEAK = 0.9
_TABLE = 2048  # samples per wavetable cycle

Chord = tuple[int, str]  # (root pitch class, quality)
Note = tuple[float, float, int, float]  # (start s, duration s, midi pitch, velocity 0..1)
Hits = dict[str, list[tuple[float, float]]]  # drum -> (time s, velocity)
Rng = np.random.Generator


@dataclass(frozen=True)
class _Song:
    key: int
    tempo: int
    form: str
    beat_s: float
    swing: float  # where the swung offbeat eighth falls within a beat (2/3 = triplet feel)
    bars: tuple[Chord, ...]  # chord of every bar the backing plays, plus one to walk into
    timbres: dict[str, int]  # instrument -> which of its TIMBRES

    def chord_at(self, beat: float) -> Chord:
        return self.bars[int(beat // 4)]


def make_song(
    name: str,
    out_dir: str | Path,
    seconds: float = 60.0,
    seed: int = 0,
    sample_rate: int = 44100,
    variety: bool = False,
) -> dict:
    """Writes out_dir/mixture.flac, out_dir/stems/{drums,bass,piano,other}.flac (stereo,
    sample_rate, 16-bit FLAC; `other` is the saxophone, named like Demucs' stem so the default
    role mapping applies), out_dir/truth.json; returns the truth dict. ``variety``: draw
    from every form, tempo, swing, timbre and level (VARIETY), not the classic songs'."""
    out_dir = Path(out_dir)
    sr = sample_rate
    n = int(round(seconds * sr))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()))

    ranges = VARIETY if variety else CLASSIC
    song = _plan(rng, seconds, ranges, variety)
    bar_s = 4 * song.beat_s
    sections = _solo_sections(rng, int(seconds / bar_s + 1e-9))
    # sax notes on the sample grid, so truth.json says exactly where the audio is
    solos = [
        [(round(t * sr), max(1, round(d * sr)), p, v) for t, d, p, v in notes]
        for notes in _sax_line(rng, song, sections)
    ]
    solos = [notes for notes in solos if notes]

    drums = _render_drums(rng, _drum_hits(rng, song, len(song.bars) - 1), n, sr)
    bass = _pan(_render_tones(rng, "bass", _bass_line(rng, song), n, sr, song.timbres["bass"]),
                rng.uniform(-0.1, 0.1))
    piano = _pan(_render_tones(rng, "piano", _piano_hits(rng, song), n, sr,
                               song.timbres["piano"]), rng.uniform(-0.4, -0.2))
    sax = _pan(_render_sax(rng, [x for notes in solos for x in notes], n, sr,
                           song.timbres["sax"]), rng.uniform(0.1, 0.35))

    stops = _band_stops(solos, song.beat_s * sr)
    gate = _gate(stops, n, round(0.005 * sr))
    # balance the backing, then make the sax about as loud as all of it where it plays
    fade = np.minimum(1.0, np.arange(n, 0, -1) / (0.01 * sr))  # no click where the song is cut
    stems = {}
    for stem, audio, level_db in (("drums", drums, -1), ("bass", bass, 0), ("piano", piano, -3)):
        level = 10 ** ((level_db + rng.uniform(-ranges["level_db"], ranges["level_db"])) / 20)
        stems[stem] = audio * gate * fade * (level / _rms(audio))
    backing = stems["drums"] + stems["bass"] + stems["piano"]
    solo_mask = np.zeros(n, dtype=bool)
    for notes in solos:
        solo_mask[notes[0][0] : notes[-1][0] + notes[-1][1]] = True
    if solo_mask.any():
        sax *= _rms(backing[:, solo_mask]) / _rms(sax[:, solo_mask])
        sax *= 10 ** (rng.uniform(-ranges["sax_db"], ranges["sax_db"]) / 20)
    stems["other"] = sax

    mixture = backing + sax
    peak = max(float(np.abs(x).max()) for x in [mixture, *stems.values()])
    gain = PEAK / peak if peak > 0 else 1.0
    write_audio(out_dir / "mixture.flac", mixture * gain, sr)
    for stem in STEMS:
        write_audio(out_dir / "stems" / f"{stem}.flac", stems[stem] * gain, sr)

    truth = _truth(name, seed, seconds, sr, song, solos, stops)
    write_json(out_dir / "truth.json", truth)
    return truth


def _truth(name: str, seed: int, seconds: float, sr: int, song: _Song, solos: list[list[tuple]],
           stops: list[tuple[int, int]]) -> dict:
    """What truth.json says of a song: its plan, and where the solos and notes are (s)."""
    return {
        "name": name,
        "seed": seed,
        "seconds": seconds,
        "sample_rate": sr,
        "key": NOTE_NAMES[song.key],
        "tempo_bpm": song.tempo,
        "swing": round(song.swing, 4),  # the swung eighth's place within a beat
        "form": song.form,
        "timbres": song.timbres,
        "chords": _chord_spans(song, seconds),
        "solo_intervals": [
            [round(notes[0][0] / sr, 4), round((notes[-1][0] + notes[-1][1]) / sr, 4)]
            for notes in solos
        ],
        "notes": [
            [round(s0 / sr, 4), round((s0 + length) / sr, 4), int(p)]
            for notes in solos
            for s0, length, p, _ in notes
        ],
        "band_stops": [[round(a / sr, 4), round(b / sr, 4)] for a, b in stops],
        "stems": dict(STEMS),
    }


# ----------------------------------------------------------------------------- the score


def _plan(rng: Rng, seconds: float, ranges: dict = CLASSIC, timbres: bool = False) -> _Song:
    key = int(rng.integers(12))
    tempo = int(rng.integers(*ranges["tempi"]))
    form = str(rng.choice(list(ranges["forms"])))
    beat_s = 60.0 / tempo
    n_bars = int(np.ceil(seconds / (4 * beat_s))) + 1
    cycle = FORMS[form]
    bars = tuple(
        ((key + cycle[i % len(cycle)][0]) % 12, cycle[i % len(cycle)][1]) for i in range(n_bars)
    )
    swing = float(rng.uniform(*ranges["swing"]))
    drawn = {i: int(rng.integers(TIMBRES)) if timbres else 0 for i in ("sax", "bass", "piano")}
    return _Song(key, tempo, form, beat_s, swing, bars, drawn)


def _chord_name(chord: Chord) -> str:
    return NOTE_NAMES[chord[0]] + chord[1]


def _chord_spans(song: _Song, seconds: float) -> list[list]:
    """[start_s, end_s, name] for each chord change, cut at the end of the song."""
    bar_s = 4 * song.beat_s
    spans: list[list] = []
    for i, chord in enumerate(song.bars):
        start = i * bar_s
        if start >= seconds - 1e-9:
            break
        end = min((i + 1) * bar_s, seconds)
        if spans and spans[-1][2] == _chord_name(chord):
            spans[-1][1] = end
        else:
            spans.append([start, end, _chord_name(chord)])
    return [[round(s, 4), round(e, 4), c] for s, e, c in spans]


def _solo_sections(rng: Rng, n_bars: int) -> list[tuple[int, int]]:
    """Bar ranges [start, end) the sax plays in: never in the intro or outro, and in most
    songs split by a backing-only break so there are two solos."""
    intro, outro = (int(x) for x in rng.integers(2, 5, size=2))
    if n_bars - intro - outro < 2:
        intro = outro = 2
    start, end = intro, n_bars - outro
    if end - start < 2:
        return []
    gap = int(rng.integers(2, 5))
    if end - start >= gap + 6 and rng.random() < 0.85:
        cut = int(rng.integers(start + 3, end - gap - 2))
        return [(start, cut), (cut + gap, end)]
    return [(start, end)]


def _sax_line(rng: Rng, song: _Song, sections: list[tuple[int, int]]) -> list[list[Note]]:
    """The solo, one note list per section: phrases of 1-4 bars on the swung grid with
    rests of 1-4 beats, every pitch taken from the scale of the chord under it."""
    s = song.swing
    # rhythms of one beat as (onset, length) in beats; the last one leaves the downbeat empty
    rhythms = (
        ((0.0, s), (s, 1 - s)),
        ((0.0, 1.0),),
        ((0.0, 1 / 3), (1 / 3, 1 / 3), (2 / 3, 1 / 3)),
        ((0.0, s),),
        ((s, 1 - s),),
    )
    odds = np.array([0.5, 0.2, 0.1, 0.1, 0.1])
    pitch, direction = int(rng.integers(58, 70)), 1
    solos = []
    for start_bar, end_bar in sections:
        notes: list[Note] = []
        pos, end = start_bar * 4 + int(rng.integers(0, 3)), end_bar * 4
        while end - pos >= 2:
            phrase_end = min(pos + int(rng.integers(4, 17)), end)
            events = []  # (onset beat, length beats, articulation)
            for b in range(pos, phrase_end):
                if b == phrase_end - 1:
                    events.append((b, 1.0, 0.9))
                elif b == phrase_end - 2 and rng.random() < 0.3:
                    events.append((b, 2.0, 0.9))
                    break
                else:
                    # a phrase starts on the beat, so the rest before it is no longer than planned
                    k = 4 if b == pos else 5
                    rhythm = rhythms[rng.choice(k, p=odds[:k] / odds[:k].sum())]
                    events += [(b + o, length, rng.uniform(0.8, 0.95)) for o, length in rhythm]
            for i, (beat, length, articulation) in enumerate(events):
                pitch, direction = _next_pitch(
                    rng, song.chord_at(beat), pitch, direction, strong=beat % 1 == 0, first=i == 0
                )
                accent = 0.08 if 0.5 < beat % 1 < 0.75 else 0.0  # jazz players lean on offbeats
                velocity = min(1.0, rng.uniform(0.7, 0.92) + accent)
                notes.append(
                    (beat * song.beat_s, length * articulation * song.beat_s, pitch, velocity)
                )
            rest = int(rng.integers(1, 5))
            while rest > 1 and (rest + 0.25) * song.beat_s > MAX_REST_S:
                rest -= 1
            pos = phrase_end + rest
        solos.append(notes)
    return solos


def _band_stops(solos: list[list[tuple[int, int, int, float]]], beat: float
                ) -> list[tuple[int, int]]:
    """[start, end) samples of the sax's rests of 0.9 beat or more inside a section: from
    the end of one note to the onset of the next."""
    return [(s0 + l0, s1) for notes in solos
            for (s0, l0, _, _), (s1, _, _, _) in zip(notes, notes[1:], strict=False)
            if s1 - (s0 + l0) >= 0.9 * beat]


def _gate(stops: list[tuple[int, int]], n: int, ramp: int) -> np.ndarray:
    """[N] gain of the band: down over ``ramp`` samples from each stop's start, 0, and back
    up over the last ``ramp`` samples before its end, so it is full again at the next note."""
    gate = np.ones(n)
    for a, b in stops:  # all inside the song (solos end bars before it) and >> 2 ramps long
        gate[a:b] = 0.0
        gate[a:a + ramp] = np.linspace(1.0, 0.0, ramp)
        gate[b - ramp:b] = np.linspace(0.0, 1.0, ramp)
    return gate


def _next_pitch(
    rng: Rng, chord: Chord, pitch: int, direction: int, strong: bool, first: bool
) -> tuple[int, int]:
    """Mostly steps through the chord's scale in the current direction; chord tones on beats."""
    root, quality = chord
    tones, scale = QUALITIES[quality]
    cands = np.arange(SAX_RANGE[0], SAX_RANGE[1] + 1)
    pcs = (cands - root) % 12
    is_tone = np.isin(pcs, tones)
    step = cands - pitch
    if first:  # a phrase starts on a chord tone near where the last one ended
        w = np.exp(-np.abs(step) / 4.0) * is_tone
    else:
        w = np.exp(-np.abs(step) / 2.0) * np.isin(pcs, scale)
        w *= np.where(np.sign(step) == direction, 1.0, 0.25)
        w *= np.where(step == 0, 0.2, 1.0)
        if strong:
            w *= np.where(is_tone, 4.0, 1.0)
    new = int(rng.choice(cands, p=w / w.sum()))
    if new >= SAX_RANGE[1] - 3:
        direction = -1
    elif new <= SAX_RANGE[0] + 3:
        direction = 1
    elif rng.random() < 0.15:
        direction = -direction
    return new, direction


def _nearest(pitch: int, pcs: list[int], lo: int, hi: int) -> np.ndarray:
    """Pitches in [lo, hi] with one of the pitch classes ``pcs``, nearest to ``pitch`` first."""
    cands = np.arange(lo, hi + 1)
    cands = cands[np.isin(cands % 12, pcs)]
    return cands[np.argsort(np.abs(cands - pitch), kind="stable")]


def _bass_line(rng: Rng, song: _Song) -> list[Note]:
    """Walking quarters: root on the one, chord/scale tones, then an approach to the next root."""
    lo, hi = BASS_RANGE
    notes = []
    pitch = int(_nearest(38, [song.bars[0][0]], lo, hi)[0])
    for bar in range(len(song.bars) - 1):
        root, quality = song.bars[bar]
        tones, scale = QUALITIES[quality]
        next_root = song.bars[bar + 1][0]
        for beat in range(4):
            if beat == 0:
                cands = _nearest(pitch, [root], lo, hi)[:2]
                new = int(cands[0] if len(cands) == 1 or rng.random() < 0.75 else cands[1])
            elif beat == 3:  # chromatic from above/below, or the fifth of where we go
                pcs = [(next_root + d) % 12 for d in (-1, 1, 7)]
                new = int(rng.choice(_nearest(pitch, pcs, lo, hi)[:3]))
            else:
                cands = _nearest(pitch, [(root + i) % 12 for i in scale], lo, hi)[1:7]
                w = np.where(np.isin((cands - root) % 12, tones), 2.0, 1.0)
                new = int(rng.choice(cands, p=w / w.sum()))
            pitch = new
            t = (bar * 4 + beat) * song.beat_s + rng.normal(0, 0.003)
            notes.append((max(0.0, t), 0.92 * song.beat_s, pitch, rng.uniform(0.8, 1.0)))
    return notes


def _piano_hits(rng: Rng, song: _Song) -> list[Note]:
    """Comping: 3-4 note rootless voicings on a few swung spots per bar, led smoothly."""
    s = song.swing
    rhythms = (
        (0.0,),
        (0.0, 1 + s),
        (1 + s,),
        (s, 2 + s),
        (1.0, 3.0),
        (0.0, 2 + s),
        (1 + s, 3.0),
        (2.0,),
    )
    notes = []
    center = float(PIANO_CENTER)
    for bar in range(len(song.bars) - 1):
        if rng.random() < 0.1:  # the pianist lays out now and then
            continue
        root, quality = song.bars[bar]
        intervals = list(VOICINGS[quality])
        if rng.random() < 0.3:  # drop a colour tone; the 3rd and 7th say what the chord is
            colours = [i for i in intervals if i not in (3, 4, 10, 11)]
            intervals.remove(colours[rng.integers(len(colours))])
        voicing = _voicing([(root + i) % 12 for i in intervals], center)
        center = 0.7 * float(voicing.mean()) + 0.3 * PIANO_CENTER
        onsets = rhythms[rng.integers(len(rhythms))]
        for i, onset in enumerate(onsets):
            stop = onsets[i + 1] if i + 1 < len(onsets) else 4.0
            length = min(float(rng.choice([0.4, 0.8, 1.6])), stop - onset - 0.1)
            t0 = (bar * 4 + onset) * song.beat_s
            velocity = rng.uniform(0.5, 0.9)
            for p in voicing:  # a slight roll across the voices
                t = t0 + rng.uniform(0.0, 0.012)
                notes.append((t, length * song.beat_s, int(p), velocity))
    return notes


def _voicing(pcs: list[int], center: float) -> np.ndarray:
    """The close-position voicing of ``pcs`` whose middle is nearest to ``center``."""
    pitches = np.arange(48, 80)
    pitches = pitches[np.isin(pitches % 12, pcs)]
    k = len(set(pcs))
    options = [pitches[i : i + k] for i in range(len(pitches) - k + 1)]
    return min(options, key=lambda v: abs(float(v.mean()) - center))


def _drum_hits(rng: Rng, song: _Song, n_bars: int) -> Hits:
    """(time s, velocity) per drum: swung ride, hi-hat on 2 & 4, feathered kick, snare comping."""
    s = song.swing
    hits: Hits = {"ride": [], "hat": [], "kick": [], "snare": []}

    def hit(drum: str, beat: float, velocity: float) -> None:
        t = beat * song.beat_s + rng.normal(0, 0.003)
        hits[drum].append((max(0.0, t), velocity * rng.uniform(0.85, 1.0)))

    for bar in range(n_bars):
        b0 = bar * 4
        for beat in range(4):
            hit("ride", b0 + beat, 0.9 if beat % 2 else 0.75)
            if beat % 2 or rng.random() < 0.1:  # the "ding-da" skip note, now and then extra
                hit("ride", b0 + beat + s, 0.55)
            if beat % 2:
                hit("hat", b0 + beat, 0.8)
            hit("kick", b0 + beat, 0.3)  # feathered
        turnaround = bar % len(FORMS[song.form]) == len(FORMS[song.form]) - 1
        for slot in range(8):
            beat = b0 + slot // 2 + (s if slot % 2 else 0.0)
            if rng.random() < (0.35 if turnaround else 0.12):
                hit("snare", beat, rng.uniform(0.3, 0.75))
            elif slot % 2 and rng.random() < 0.04:  # a "bomb" on an offbeat
                hit("kick", beat, 0.9)
    return hits


# ----------------------------------------------------------------------------- the sound


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


@lru_cache(maxsize=8)
def _sines(n_harmonics: int) -> np.ndarray:
    phase = np.arange(_TABLE + 1) / _TABLE  # one extra sample to interpolate into
    return np.sin(2 * np.pi * np.arange(1, n_harmonics + 1)[:, None] * phase)


@lru_cache(maxsize=1024)
def _wavetables(instrument: str, midi: int, sample_rate: int, timbre: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """(dark, bright) single cycles for one pitch, band-limited below Nyquist; ``timbre``
    (0 .. TIMBRES - 1) moves the slope of the harmonics and the sax's formant."""
    k = np.arange(1, 65)
    f = k * _hz(midi)
    slope = (0.0, 0.25, -0.15)[timbre]  # steeper: darker
    if instrument == "sax":  # all harmonics, a formant near 1.4 kHz, reedy top
        formant = (1400, 1100, 1800)[timbre]
        bright = k**-(0.6 + slope) * (1 + 1.5 * np.exp(-(((f - formant) / 700) ** 2))) \
            / (1 + (f / 4000) ** 2)
        dark = bright * np.exp(-f / 1500)
    elif instrument == "bass":
        bright = k**-(1.2 + slope) / (1 + (f / 1200) ** 2)
        dark = k**-2.0 * (k <= 3)
    else:  # piano
        bright = k**-(1.1 + slope) / (1 + (f / 3000) ** 2)
        dark = k**-2.0 * (k <= 4)
    keep = f < 0.45 * sample_rate
    tables = []
    for amps in (dark, bright):
        table = (amps * keep) @ _sines(len(k))
        table /= np.abs(table).max()
        table.setflags(write=False)
        tables.append(table)
    return tables[0], tables[1]


def _osc(
    tables: tuple[np.ndarray, np.ndarray], cycles: np.ndarray, brightness: np.ndarray
) -> np.ndarray:
    """Read both wavetables at phase ``cycles`` and crossfade dark -> bright."""
    x = (cycles % 1.0) * _TABLE
    i = np.minimum(x.astype(np.int64), _TABLE - 1)
    frac = x - i
    dark, bright = (t[i] + frac * (t[i + 1] - t[i]) for t in tables)
    return dark + brightness * (bright - dark)


def _add(out: np.ndarray, start: int, segment: np.ndarray) -> None:
    """Mix ``segment`` into ``out`` at ``start``, cut at the end of ``out``."""
    if start >= out.shape[-1]:
        return
    segment = segment[..., : out.shape[-1] - start]
    out[..., start : start + segment.shape[-1]] += segment


def _render_sax(rng: Rng, notes: list[tuple[int, int, int, float]], n: int, sr: int,
                timbre: int = 0) -> np.ndarray:
    """Monophonic sax: scoop into the pitch, delayed vibrato, brightness following the
    envelope, a little breath noise. Silent outside the notes."""
    out = np.zeros(n)
    longest = max((length for _, length, _, _ in notes), default=0)
    breath = _band_noise(rng, longest + sr, sr, 800.0, 6000.0)
    for start, length, pitch, velocity in notes:
        t = np.arange(length) / sr
        dur = length / sr
        vibrato = np.clip((t - 0.15) / 0.2, 0.0, 1.0) * np.sin(2 * np.pi * rng.uniform(4.8, 6) * t)
        cents = -40.0 * np.exp(-t / 0.025) + 18.0 * vibrato
        cycles = np.cumsum(_hz(pitch) * 2.0 ** (cents / 1200)) / sr + rng.random()
        attack, release = min(0.03, dur / 4), min(0.06, dur / 3)
        env = np.minimum(1.0, t / attack) * np.minimum(1.0, (dur - t) / release)
        env *= 1.0 - 0.2 * t / max(dur, 0.5)
        tone = _osc(_wavetables("sax", pitch, sr, timbre), cycles, velocity * env)
        offset = int(rng.integers(0, len(breath) - length))
        _add(out, start, velocity * env * (tone + 0.04 * breath[offset : offset + length]))
    return out


def _render_tones(rng: Rng, instrument: str, notes: list[Note], n: int, sr: int,
                  timbre: int = 0) -> np.ndarray:
    """Plucked/struck tones: a bright attack that fades into a darker, slowly decaying body."""
    out = np.zeros(n)
    for start_s, dur_s, pitch, velocity in notes:
        start, length = round(start_s * sr), max(1, round(dur_s * sr))
        t = np.arange(length) / sr
        if instrument == "bass":
            bright_decay, body_decay, release = 0.07, 0.9, 0.03
        else:  # piano: lower strings ring longer
            bright_decay, body_decay, release = 0.15, 1.5 * 2.0 ** (-(pitch - 60) / 24), 0.06
        cycles = _hz(pitch) * t + rng.random()
        env = (1 - np.exp(-t / 0.003)) * np.exp(-t / body_decay)
        env *= np.minimum(1.0, (dur_s - t) / min(release, dur_s / 2))
        brightness = velocity * np.exp(-t / bright_decay)
        tone = _osc(_wavetables(instrument, pitch, sr, timbre), cycles, brightness)
        _add(out, start, velocity * env * tone)
    return out


def _band_noise(rng: Rng, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-passed to [lo, hi] Hz in the frequency domain, peak 1."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spectrum *= (f >= lo) & (f <= min(hi, 0.45 * sr))
    x = np.fft.irfft(spectrum, n)
    return x / np.abs(x).max()


def _drum_kit(rng: Rng, sr: int) -> dict[str, np.ndarray]:
    """One sample per drum, made fresh for each song so kits differ a little."""

    def time(seconds: float) -> np.ndarray:
        return np.arange(int(seconds * sr)) / sr

    t = time(0.4)
    sweep = 45 + 80 * np.exp(-t / 0.035)  # the pitch drop of a kick
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.exp(-t / 0.16)
    t = time(0.25)
    snare = 0.7 * _band_noise(rng, len(t), sr, 1200, 8000) * np.exp(-t / 0.07)
    snare += 0.5 * np.sin(2 * np.pi * rng.uniform(170, 210) * t) * np.exp(-t / 0.04)
    t = time(1.6)
    partials = np.array([310, 742, 1270, 2230, 3380, 5020]) * rng.uniform(0.95, 1.05, 6)
    bell = np.sin(2 * np.pi * partials[:, None] * t + rng.uniform(0, 2 * np.pi, (6, 1)))
    ride = 0.6 * _band_noise(rng, len(t), sr, 3000, 15000) * np.exp(-t / 0.45)
    ride += 0.12 * (bell / np.sqrt(np.arange(1, 7))[:, None]).sum(axis=0) * np.exp(-t / 0.5)
    ride *= np.minimum(1.0, t / 0.001)
    t = time(0.12)
    hat = _band_noise(rng, len(t), sr, 6000, 16000) * np.exp(-t / 0.025)
    kit = {"kick": kick, "snare": snare, "ride": ride, "hat": hat}
    return {drum: x / np.abs(x).max() for drum, x in kit.items()}


def _render_drums(rng: Rng, hits: Hits, n: int, sr: int) -> np.ndarray:
    kit = _drum_kit(rng, sr)
    gains = {"kick": 0.9, "snare": 0.6, "ride": 0.35, "hat": 0.4}
    pans = {"kick": 0.0, "snare": -0.1, "ride": 0.35, "hat": -0.35}
    out = np.zeros((2, n))
    for drum, times in hits.items():
        mono = np.zeros(n)
        for t, velocity in times:
            _add(mono, round(t * sr), gains[drum] * velocity * kit[drum])
        out += _pan(mono, pans[drum] + rng.uniform(-0.05, 0.05))
    return out


def _pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan: -1 left, 0 centre, +1 right; returns [2, N]."""
    angle = (position + 1) * np.pi / 4
    return np.stack([np.cos(angle) * mono, np.sin(angle) * mono])


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) or 1e-12
