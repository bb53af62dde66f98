"""Tag conditioning (``condition.columns``): sheet columns such as style, mood, tempo or key
become one id per column for the model.

The training split's values of a column make its vocabulary: a categorical column gives each
value an id; a numeric one (every value a number) is cut into ``buckets`` quantile buckets.
Id 0 is "no tag": an empty or unseen value, or a tag dropped in training (each column on its
own, so that guidance can weigh each column apart at generation). Demo songs tag themselves
with their ground truth (tempo in bpm, key) where the sheet leaves those empty; a pitch or
tempo variant (augment) is tagged at its own tempo and key.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import torch

from soloist.synth import NOTE_NAMES

DEMO_TRUTH = {"tempo": "tempo_bpm", "key": "key"}  # column -> the demo's truth.json field
SHARPS = {"C#": "Db", "D#": "Eb", "F#": "Gb", "G#": "Ab", "A#": "Bb"}


def truth_tags(truth: dict) -> dict[str, str]:
    """The tags a demo song's truth.json gives: {tempo, key} as strings."""
    return {column: str(truth[field]) for column, field in DEMO_TRUTH.items()}


def tags_of(sheet: dict[str, str], truth: dict[str, str], columns: list[str]) -> dict[str, str]:
    """A track's tag per column: the sheet's value, else its ground truth, else ''."""
    return {c: sheet.get(c) or truth.get(c, "") for c in columns}


def shifted(tags: dict[str, str], variant: str) -> dict[str, str]:
    """The tags of a variant (augment's ``p<semitones>t<tempo>``): a numeric tempo scaled
    and a key's root note transposed as the audio was; the other tags as they are."""
    m = re.fullmatch(r"p([+-]?[0-9.]+)t([0-9.]+)", variant)
    semitones, tempo = float(m[1]), float(m[2])
    out = dict(tags)
    if _number(tags.get("tempo", "")) is not None:
        out["tempo"] = f"{float(tags['tempo']) * tempo:g}"
    key = re.fullmatch(r"([A-G][b#]?)(.*)", tags.get("key", ""))
    if key and SHARPS.get(key[1], key[1]) in NOTE_NAMES:
        note = NOTE_NAMES.index(SHARPS.get(key[1], key[1])) + round(semitones)
        out["key"] = NOTE_NAMES[note % 12] + key[2]
    return out


def _number(value: str) -> float | None:
    """A finite number, or None ("nan" or "inf" make a column categorical)."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if np.isfinite(number) else None


def vocabulary(condition: dict, per_track: list[dict]) -> Vocabulary | None:
    """The vocabulary of the training tracks' tags (stats.json's per_track), or None
    without condition.columns."""
    if not condition["columns"]:
        return None
    train = [t.get("tags", {}) for t in per_track if t["split"] == "train"]
    return Vocabulary.fit(train, condition["columns"], condition["buckets"])


@dataclass
class Vocabulary:
    """Ids of each column's tags. ``values[c]``: a categorical column's values (id i + 1);
    ``edges[c]``: a numeric column's inner bucket edges (id = bucket + 1)."""

    columns: list[str]
    values: dict[str, list[str]]
    edges: dict[str, list[float]]

    @classmethod
    def fit(cls, tags: list[dict[str, str]], columns: list[str], buckets: int) -> Vocabulary:
        """The vocabulary of the training tracks' ``tags`` (one dict per track)."""
        values, edges = {}, {}
        for c in columns:
            seen = sorted({t.get(c, "") for t in tags} - {""})
            numbers = [_number(v) for v in seen]
            if seen and None not in numbers:
                qs = np.linspace(0, 1, buckets + 1)[1:-1]
                edges[c] = sorted(set(np.quantile(numbers, qs).round(6).tolist()))
            else:
                values[c] = seen
        return cls(list(columns), values, edges)

    def sizes(self) -> list[int]:
        """Ids per column, 0 included."""
        return [len(self.values[c]) + 1 if c in self.values else len(self.edges[c]) + 2
                for c in self.columns]

    def ids(self, tags: dict[str, str]) -> list[int]:
        """One id per column of a track's ``tags`` (0: none or unseen)."""
        out = []
        for c in self.columns:
            value = tags.get(c, "")
            if c in self.edges:
                number = _number(value) if value else None
                out.append(0 if number is None else
                           1 + int(np.searchsorted(self.edges[c], number, side="right")))
            else:
                out.append(self.values[c].index(value) + 1 if value in self.values[c] else 0)
        return out

    @classmethod
    def of(cls, info: dict) -> Vocabulary | None:
        """The vocabulary a model folder's config.json keeps, or None (no tags)."""
        return cls(**info["condition"]) if "condition" in info else None

    def tensor(self, tags: list[dict[str, str]]) -> torch.Tensor:
        """Ids int64 [B, columns] of a batch's tags."""
        return torch.tensor([self.ids(t) for t in tags], dtype=torch.long)

    def to_dict(self) -> dict:
        return asdict(self)


def model_tags(info: dict, tags: list[dict[str, str]], scales: dict[str, float]
               ) -> tuple[list[torch.Tensor] | None, tuple[float, ...]]:
    """For generation with a model of ``info`` (its config.json): each input's tag ids
    int64 [columns], and the guidance scale of every column (``scales`` by column, default
    1). A column the model was not conditioned on is a ValueError naming it."""
    columns = info.get("condition", {}).get("columns", [])
    for column in {c for t in tags for c in t} | set(scales):
        if column not in columns:
            known = ", ".join(columns) if columns else "no tags"
            raise ValueError(f"the model knows no tag {column!r} (it was conditioned on "
                             f"{known})")
    vocab = Vocabulary.of(info)
    if vocab is None:
        return None, ()
    return list(vocab.tensor(tags)), tuple(scales.get(c, 1.0) for c in columns)
