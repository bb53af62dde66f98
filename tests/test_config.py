"""Config and sheet validation: errors name the offending key or row."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import workflow_copy

from soloist.config import ConfigError, read_tracks, row_of, validate_config

ROOT = Path(__file__).resolve().parent.parent


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def schema_keys(schema: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, sub in schema.get("properties", {}).items():
        keys.add(prefix + key)
        keys |= schema_keys(sub, f"{prefix}{key}.")
    return keys


def config_keys(config: dict, schema: dict, prefix: str = "") -> set[str]:
    """The keys of ``config`` down to the schema's settings (a mapping value is one key)."""
    keys = set()
    for key, value in config.items():
        keys.add(prefix + key)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in sub:
            keys |= config_keys(value, sub, f"{prefix}{key}.")
    return keys


def test_config_yaml_is_the_one_home_of_defaults():
    config = validate_config(default_config())
    assert config["clip"]["seconds"] == 10
    assert config["tokenize"] | {"device": "auto"} == {
        "model": "auto", "codebooks": None, "chunk_seconds": 10, "warmup_seconds": 0.5,
        "batch_size": "auto", "precision": "fp32", "compile": False, "device": "auto",
        "threads": 2, "gpus": 1}
    schema_text = (ROOT / "config/schemas/config.schema.yaml").read_text()
    schema = yaml.safe_load(schema_text)
    # config.yaml gives every setting the schema knows, and the schema gives no default
    assert config_keys(default_config(), schema) == schema_keys(schema)
    assert not re.search(r"(^|[{,]) *default: (?!\{type)", schema_text, re.M)
    # a section given in part keeps config.yaml's other settings; a mapping value is whole
    partial = validate_config({"clip": {"seconds": 12}})
    assert partial["clip"] == default_config()["clip"] | {"seconds": 12}
    assert partial["separate"] == default_config()["separate"]


def test_every_window_fits_the_one_before():
    with pytest.raises(ConfigError, match=re.escape(
            "train.seconds (12) is longer than clip.seconds (10), the window every sample "
            "has: set train.seconds to at most 10")):
        validate_config({"train": {"seconds": 12}})
    with pytest.raises(ConfigError, match=re.escape(
            "evaluate.seconds (11) is longer than clip.seconds (10), the window every sample "
            "has: set evaluate.seconds to at most 10")):
        validate_config({"evaluate": {"seconds": 11}})
    with pytest.raises(ConfigError, match="train.seconds .5. is longer than clip.seconds .4."):
        validate_config({"clip": {"seconds": 4}})  # config.yaml's train.seconds is 5
    assert validate_config({"train": {"seconds": 10}})["train"]["seconds"] == 10
    assert validate_config({"evaluate": {"seconds": 10}})["evaluate"]["seconds"] == 10
    assert validate_config({})["evaluate"]["seconds"] is None  # the model's window


@pytest.mark.parametrize("change, message", [
    ({"clip": {"seconds": -1}}, "clip.seconds: -1 is less than or equal to the minimum of 0"),
    ({"weights": "downloaded"}, "weights: 'downloaded' is not one of"),
    ({"separate": {"device": "gpu0"}}, "separate.device: 'gpu0' does not match"),
    ({"clip": {"secs": 3}}, "clip: Additional properties are not allowed ('secs'"),
    ({"shard": {"fractions": {"train": 0.5, "valid": 0.1, "test": 0.1}}}, "sum to 1"),
    ({"tokenize": {"model": "mimi"}},
     "tokenize.model: 'mimi' is not one of ['auto', 'encodec_24khz'"),
    ({"tokenize": {"model": "encodec_32khz", "codebooks": 8}},
     "tokenize.codebooks: encodec_32khz has 4 codebooks, not 8"),
    ({"tokenize": {"model": "own_demo", "codebooks": 9}},
     "tokenize.codebooks: own_demo has 8 codebooks, not 9"),
    ({"augment": {"variants": [{"semitones": 13, "tempo": 1.0}]}},
     "augment.variants.0.semitones: 13 is greater than the maximum of 12"),
    ({"augment": {"variants": [{"semitones": 1, "tempo": 1.0}, {"semitones": 0, "tempo": 0.4}]}},
     "augment.variants.1.tempo: 0.4 is less than the minimum of 0.5"),
    ({"augment": {"variants": [{"semitones": 0, "tempo": 1}]}},
     "augment.variants.0: 0 semitones at tempo 1 is the track itself"),
    ({"augment": {"splits": ["train", "dev"]}}, "augment.splits.1: 'dev' is not one of"),
    ({"codec": {"ratios": [5, 5, 5]}},
     "codec.ratios: architecture spectral needs an even hop, not 125"),
])
def test_bad_config_names_the_key(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(change)


def write_sheet(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tracks.tsv"
    path.write_text(text)
    return path


def test_sheet_kinds_and_playlist_rows(tmp_path):
    (tmp_path / "stems").mkdir()
    sheet = write_sheet(tmp_path, "track\tsource\tsplit\n"
                        "a\tdemo:song1\t\n"
                        f"b\t{tmp_path}/x.wav\ttest\n"
                        f"c\t{tmp_path}/stems\t\n"
                        "d\thttps://example.invalid/list\t\n")
    rows = read_tracks(sheet)
    assert [r.kind for r in rows.values()] == ["demo", "file", "stems", "url"]
    assert rows["b"].split == "test" and rows["a"].split == ""
    assert row_of("d.002", rows).track == "d"
    with pytest.raises(KeyError):
        row_of("a.001", rows)  # only URL rows expand


@pytest.mark.parametrize("text, message", [
    ("track\tsource\nok\tdemo:x\nbad id\tdemo:y\n", "line 3 (track 'bad id'): track: 'bad id'"),
    ("track\tsource\nx\tdemo:x\nx\tdemo:y\n", "line 3: track 'x' already on line 2"),
    ("track\tsource\nx\t\n", "line 2 (track 'x'): (top level): 'source' is a required"),
    ("track\tsource\tsplit\nx\tdemo:x\ttrain2\n", "line 2 (track 'x'): split: 'train2'"),
    ("track\tsource\nx\tdemo:../../etc\n", "line 2: demo name '../../etc' must match"),
    ("track\tsource\n", "lists no tracks"),
    ("track\tsource\np\thttp://h/list\np.001\tdemo:x\n", "collides with the playlist entries"),
    ("track\tsource\nc\tdemo:*0\n", "line 2: demo:*0 asks for 0 demo songs; give 1 to"),
    ("track\tsource\nc\tdemo:*2\nc.002\tdemo:x\n", "line 3: track 'c.002' already on line 2"),
])
def test_bad_sheet_names_the_row(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_tracks(write_sheet(tmp_path, text))


def test_a_demo_row_with_a_count_is_that_many_songs(tmp_path):
    """``demo:*N``: N synthesized songs without N rows, each a row of its own (its split by
    the hash of its id unless the row gives one, its tags the row's)."""
    rows = read_tracks(write_sheet(tmp_path, "track\tsource\tsplit\tstyle\n"
                                             "corpus\tdemo:*12\t\tbop\nheld\tdemo:*2\ttest\t\n"))
    assert list(rows)[:3] == ["corpus.001", "corpus.002", "corpus.003"] and len(rows) == 14
    song = rows["corpus.012"]
    assert (song.source, song.kind, song.split, song.tags) == ("demo:corpus.012", "demo", "",
                                                               {"style": "bop"})
    assert rows["held.002"].split == "test" and row_of("held.001", rows).track == "held.001"


def test_sheet_errors_name_the_file_line(tmp_path):
    # comments and blank lines count: the message must point where an editor would
    text = "# my sheet\ntrack\tsource\n\nok\tdemo:x\n# a note\nbad id\tdemo:y\n"
    with pytest.raises(ConfigError, match=re.escape("line 6 (track 'bad id')")):
        read_tracks(write_sheet(tmp_path, text))
    text = "track\tsource\n# first\nx\tdemo:x\n\n\t\nx\tdemo:y\n"
    with pytest.raises(ConfigError, match=re.escape("line 6: track 'x' already on line 3")):
        read_tracks(write_sheet(tmp_path, text))
    text = "# comment\n\ntrack\tsource\n\na\tdemo:x\n\n"
    assert list(read_tracks(write_sheet(tmp_path, text))) == ["a"]


def test_command_line_strings_are_read_as_the_schema_types():
    # what `--config "clip={relative_db: 20, seconds: 7.5}" "demo={stems: true}" ...` hands
    # the Snakefile: Snakemake reads nested values with YAML's BaseLoader, all strings
    config = validate_config({
        "clip": {"relative_db": "20", "seconds": "7.5"},
        "demo": {"stems": "true"},
        "separate": {"batch_size": "auto", "compile": "false", "segment": "null",
                     "context": ["drums", "bass"]},
        "ingest": {"ytdlp": {"rate_limit": "1000", "cookies": "null", "format": "best"}},
        "tokenize": {"codebooks": "8"},
        "shard": {"fractions": {"train": "0.5", "valid": "0.25", "test": "0.25"}},
    })
    assert config["clip"]["relative_db"] == 20 and config["clip"]["seconds"] == 7.5
    assert config["demo"]["stems"] is True
    assert config["separate"]["batch_size"] == "auto" and config["separate"]["compile"] is False
    assert config["separate"]["segment"] is None
    assert config["separate"]["context"] == ["drums", "bass"]
    assert config["ingest"]["ytdlp"] | {"retries": 3} == {
        "rate_limit": 1000, "cookies": None, "format": "best", "retries": 3,
        "socket_timeout": 20}
    assert config["tokenize"]["codebooks"] == 8
    assert config["shard"]["fractions"]["valid"] == 0.25


@pytest.mark.parametrize("change, message", [
    ({"clip": {"relative_db": "loud"}}, "clip.relative_db: 'loud' is not of type 'number'"),
    ({"train": {"steps": "2.5"}}, "train.steps: '2.5' is not of type 'integer'"),
    ({"keep_intermediates": "maybe"}, "keep_intermediates: 'maybe' is not of type 'boolean'"),
])
def test_strings_that_are_not_the_type_are_still_rejected(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(change)


def test_dotted_key_shows_the_nested_form():
    # a --configfile may hold `clip.seconds: 5` (on the command line Snakemake refuses it)
    with pytest.raises(ConfigError, match=re.escape(
            "'ingest.ytdlp.retries': nested keys are not written with dots; on the command "
            "line write --config \"ingest={ytdlp: {retries: 0}}\"")) as e:
        validate_config({"ingest.ytdlp.retries": 0})
    assert "--configfile" in str(e.value)


def test_snakemake_command_line_config_reaches_the_workflow(tmp_path):
    workdir = workflow_copy(tmp_path / "wf")
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "shard",
           "--config", "weights=random", "clip={relative_db: 20, seconds: 7.5}"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}  # the copy has no soloist/ of its own
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # before, the string '20' failed validation: "'20' is not of type 'number'"
    assert re.search(r"^shard +1$", proc.stdout, re.M), proc.stdout
