"""Config and track-sheet validation with errors that name the offending key or row.

Every default lives in ``config/config.yaml`` (what users read and copy), and only there:
the schemas say what a value may be, ``validate_config`` fills what a config leaves out
from config.yaml. ``clip.seconds`` is the one window length: ``train.seconds`` (its random
crop, the model's window) and ``evaluate.seconds`` are checked against it here, before
any job starts.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent.parent / "config" / "schemas"
DEFAULTS = SCHEMAS.parent / "config.yaml"
TRACK_ID = re.compile(r"[A-Za-z0-9._-]+")
FIXED_COLUMNS = ("track", "source", "split")  # the others are tags (condition.columns)
# A playlist row `p` expands into tracks `p.001`, `p.002`, ...
ENTRY_ID = re.compile(r"(?P<row>.+)\.(?P<index>[0-9]{3,})")
# ... and so does a row `p  demo:*N`: N demo songs, p.001 to p.N, each a row of its own
DEMO_SONGS = re.compile(r"demo:\*(?P<count>[0-9]+)")
MOST_DEMO_SONGS = 100_000


class ConfigError(ValueError):
    """Invalid config or track sheet; the message names the key or row."""


@dataclass(frozen=True)
class Row:
    """One line of the track sheet."""

    track: str
    source: str
    kind: str  # demo | url | file | stems
    split: str  # "" lets the hash decide
    tags: dict[str, str] = field(default_factory=dict, hash=False)  # its other columns

    @property
    def demo_name(self) -> str:
        return self.source.removeprefix("demo:")


def _schema(name: str) -> dict:
    return yaml.safe_load((SCHEMAS / name).read_text())


def _fill_defaults(schema: dict, instance: dict, defaults: dict) -> None:
    """Fill what ``instance`` leaves out from ``defaults``, section by section (a value that
    is itself a mapping, such as shard.fractions, is given whole or not at all)."""
    for key, default in defaults.items():
        sub = schema.get("properties", {}).get(key, {})
        if key not in instance:
            instance[key] = copy.deepcopy(default)
        elif isinstance(instance[key], dict) and "properties" in sub:
            _fill_defaults(sub, instance[key], default)


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    return f"{where or '(top level)'}: {error.message}"


# The JSON Schema type of each YAML scalar a string may stand for.
_TYPES = {bool: {"boolean"}, int: {"integer", "number"}, float: {"number"}, type(None): {"null"}}


def _admits(schema: dict) -> set[str]:
    """The JSON types a schema admits, counting those of its enum, const and oneOf options."""
    types = schema.get("type", [])
    admitted = {types} if isinstance(types, str) else set(types)
    for option in schema.get("oneOf", []) + schema.get("anyOf", []):
        admitted |= _admits(option)
    for value in schema.get("enum", []) + ([schema["const"]] if "const" in schema else []):
        admitted |= _TYPES.get(type(value), {"string"})
    return admitted


def _coerce(schema: dict, value):
    """``value`` with the strings that --config leaves (``clip={relative_db: 20}`` gives '20')
    read as YAML wherever the schema wants that scalar type; other values as they are."""
    if isinstance(value, dict):
        subs = schema.get("properties", {})
        return {k: _coerce(subs[k], v) if k in subs else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(schema["items"], v) for v in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if _TYPES.get(type(parsed), set()) & _admits(schema):
            return parsed
    return value


def _nested(key: str, value) -> str:
    """``clip.seconds``, 5 -> ``clip={seconds: 5}``."""
    head, *rest = key.split(".")
    for part in reversed(rest):
        value = {part: value}
    return f"{head}={yaml.safe_dump(value, default_flow_style=True).strip()}"


def validate_config(config: dict) -> dict:
    """Fill defaults into ``config`` in place and validate it; raise ConfigError naming the key."""
    schema = _schema("config.schema.yaml")
    for key in config:
        if "." in key:
            raise ConfigError(
                f"config key {key!r}: nested keys are not written with dots; on the command "
                f"line write --config \"{_nested(key, config[key])}\", or put them nested "
                f"in a YAML file given with --configfile")
    config.update(_coerce(schema, config))
    _fill_defaults(schema, config, yaml.safe_load(DEFAULTS.read_text()))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=str)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(_describe(e) for e in errors))
    if abs(sum(config["shard"]["fractions"].values()) - 1.0) > 1e-6:
        raise ConfigError(f"shard.fractions must sum to 1, got {config['shard']['fractions']}")
    _check_windows(config)
    _check_codebooks(config["tokenize"], config["codec"])
    _check_codec(config["codec"])
    _check_variants(config["augment"]["variants"])
    _check_output(config)
    return config


def _check_windows(config: dict) -> None:
    """The training crop and the evaluated solos fit in a sample: the clip window, or for
    task continuation and mix one segment of their pairs. Those have no variants yet."""
    task = config["task"]["name"]
    key = "clip" if task == "solo" else "task"
    window = config[key]["seconds"]
    too_long = [f"{stage}.seconds ({config[stage]['seconds']:g}) is longer than "
                f"{key}.seconds ({window:g}), the window every sample has: set {stage}.seconds "
                f"to at most {window:g}" for stage in ("train", "evaluate")
                if (config[stage]["seconds"] or 0) > window]
    if key == "task" and config["augment"]["variants"]:
        too_long.append(f"augment.variants: task {task} takes no variants yet")
    if too_long:
        raise ConfigError("invalid config:\n  " + "\n  ".join(too_long))


def wants_latents(config: dict) -> bool:
    """Whether the tokens are latents: asked for (task.output), or task mix's only kind."""
    return config["task"]["output"] == "latents" or config["task"]["name"] == "mix"


def _check_output(config: dict) -> None:
    """Latents are for task continuation and mix (which has nothing else and no tags), and
    our own codec's VAE has nothing else."""
    task = config["task"]["name"]
    if task == "mix" and config["condition"]["columns"]:
        raise ConfigError("invalid config:\n  condition.columns: task mix takes no tags")
    latents = wants_latents(config)
    if latents and task == "solo":
        raise ConfigError("invalid config:\n  task.output: latents is for task continuation "
                          "(task solo learns codes)")
    vae = config["tokenize"]["model"] == "own" and config["codec"]["bottleneck"] == "vae"
    if vae and not latents:
        raise ConfigError("invalid config:\n  tokenize.model: own with codec.bottleneck: vae "
                          "writes latents, not codes: set task.name: continuation and "
                          "task.output: latents, or task.name: mix")


def _check_codebooks(tokenize: dict, own: dict) -> None:
    """The codec has the codebooks asked for (our own: those the codec section gives it)."""
    from soloist.weights import max_codebooks

    most = own["codebooks"] if tokenize["model"] == "own" else max_codebooks(tokenize["model"])
    if (tokenize["codebooks"] or 0) > most:
        raise ConfigError(f"invalid config:\n  tokenize.codebooks: {tokenize['model']} has "
                          f"{most} codebooks, not {tokenize['codebooks']}")


def _check_codec(codec: dict) -> None:
    """The spectral codec reads two STFT frames a codec frame."""
    if codec["architecture"] == "spectral" and math.prod(codec["ratios"]) % 2:
        raise ConfigError(f"invalid config:\n  codec.ratios: architecture spectral needs an "
                          f"even hop, not {math.prod(codec['ratios'])}")


def _check_variants(variants: list[dict]) -> None:
    """No variant is the track itself."""
    for i, v in enumerate(variants):
        if v["semitones"] == 0 and v["tempo"] == 1:
            raise ConfigError(f"invalid config:\n  augment.variants.{i}: 0 semitones at tempo "
                              "1 is the track itself, not a variant")


def source_kind(source: str) -> str:
    if source.startswith("demo:"):
        return "demo"
    if re.match(r"https?://", source):
        return "url"
    return "stems" if os.path.isdir(source) else "file"


def read_tracks(path: str | os.PathLike, key: str = "tracks",
                condition: list[str] | tuple = ()) -> dict[str, Row]:
    """Read and validate the track sheet the config ``key`` names, which must have the
    ``condition`` columns (condition.columns; demo songs have tempo and key of their own);
    returns rows by track id, in sheet order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"track sheet {path} does not exist (config key {key!r})")
    validator = jsonschema.Draft202012Validator(_schema("tracks.schema.yaml"))
    rows: dict[str, Row] = {}
    lines: dict[str, int] = {}
    numbers: list[int] = []  # the file line of each line the reader is given

    def kept(f):
        for number, line in enumerate(f, start=1):
            if line.strip() and not line.startswith("#"):
                numbers.append(number)
                yield line

    with open(path, newline="") as f:
        reader = csv.DictReader(kept(f), delimiter="\t")
        for record in reader:
            # the record's last line: its only one, unless a quoted field spans lines
            n = numbers[reader.line_num - 1]
            record = {k: (v or "").strip() for k, v in record.items() if k is not None}
            record = {k: v for k, v in record.items() if v or k == "split"}
            errors = list(validator.iter_errors(record))
            if errors:
                name = record.get("track", "?")
                raise ConfigError(f"{path} line {n} (track {name!r}): {_describe(errors[0])}")
            track = record["track"]
            if track in rows:
                raise ConfigError(
                    f"{path} line {n}: track {track!r} already on line {lines[track]}"
                )
            for row in _expanded(record, f"{path} line {n}"):
                if row.track in rows:
                    raise ConfigError(f"{path} line {n}: track {row.track!r} already on line "
                                      f"{lines[row.track]}")
                rows[row.track], lines[row.track] = row, n
    for track in rows:
        m = ENTRY_ID.fullmatch(track)
        if m and m["row"] in rows and rows[m["row"]].kind == "url":
            raise ConfigError(f"{path}: track {track!r} collides with the playlist entries "
                              f"of URL row {m['row']!r}")
    if not rows:
        raise ConfigError(f"track sheet {path} lists no tracks")
    _check_condition(path, reader.fieldnames or [], rows, condition)
    return rows


def _expanded(record: dict[str, str], where: str) -> list[Row]:
    """A sheet record's rows: itself, or for ``demo:*N`` its N demo songs."""
    source, split = record["source"], record.get("split", "")
    tags = {k: v for k, v in record.items() if k not in FIXED_COLUMNS}
    if m := DEMO_SONGS.fullmatch(source):
        count = int(m["count"])
        if not 1 <= count <= MOST_DEMO_SONGS:
            raise ConfigError(f"{where}: {source} asks for {count} demo songs; give 1 to "
                              f"{MOST_DEMO_SONGS}")
        names = [f"{record['track']}.{i:03d}" for i in range(1, count + 1)]
        return [Row(name, f"demo:{name}", "demo", split, tags) for name in names]
    if source.startswith("demo:") and not TRACK_ID.fullmatch(source[5:]):
        raise ConfigError(f"{where}: demo name {source[5:]!r} must match {TRACK_ID.pattern} "
                          "(or write demo:*N for N demo songs)")
    return [Row(record["track"], source, source_kind(source), split, tags)]


def _check_condition(path: Path, header: list[str], rows: dict[str, Row],
                     columns: list[str] | tuple) -> None:
    from soloist.condition import DEMO_TRUTH

    demo_only = all(r.kind == "demo" for r in rows.values())
    for column in columns:
        if column not in header and not (demo_only and column in DEMO_TRUTH):
            raise ConfigError(f"condition.columns: {column!r} is not a column of the track "
                              f"sheet {path} (its columns: {', '.join(header)})")


def batch_of(track: str, batches: int) -> str:
    """The batch (``b0`` .. ``b<batches-1>``) a track's per-track stages run in.

    A hash of the id alone: adding or removing other tracks never moves a track.
    """
    digest = hashlib.sha256(track.encode()).digest()
    return f"b{int.from_bytes(digest[:8], 'big') % batches}"


def row_of(track: str, rows: dict[str, Row]) -> Row:
    """The sheet row a track comes from (itself, or the playlist row it expanded from)."""
    if track in rows:
        return rows[track]
    m = ENTRY_ID.fullmatch(track)
    if m and m["row"] in rows and rows[m["row"]].kind == "url":
        return rows[m["row"]]
    raise KeyError(f"track {track!r} is not in the track sheet")


def write_sheet(rows: list[list[str]], path: str | os.PathLike) -> None:
    """The sheet's rows (track, source, kind, split) as read, to a TSV (atomically)."""
    from soloist.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("track\tsource\tkind\tsplit\n" + "".join("\t".join(r) + "\n" for r in rows))
