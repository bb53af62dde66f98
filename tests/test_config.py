"""Config and sheet validation: errors name the offending key or row."""

import re
from pathlib import Path

import pytest
import yaml

from soloist.config import ConfigError, read_tracks, row_of, validate_config

ROOT = Path(__file__).resolve().parent.parent


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def test_default_config_is_valid_and_complete():
    config = validate_config(default_config())
    assert config["clip"]["seconds"] == 10
    assert config["tokenize"]["bandwidth"] == 3.0
    # every schema default is also spelled out in config.yaml, so users see it
    assert validate_config({}) == config | {"tracks": "config/tracks.tsv"}


@pytest.mark.parametrize("change, message", [
    ({"clip": {"seconds": -1}}, "clip.seconds: -1 is less than or equal to the minimum of 0"),
    ({"weights": "downloaded"}, "weights: 'downloaded' is not one of"),
    ({"separate": {"device": "gpu0"}}, "separate.device: 'gpu0' does not match"),
    ({"clip": {"secs": 3}}, "clip: Additional properties are not allowed ('secs'"),
    ({"shard": {"fractions": {"train": 0.5, "valid": 0.1, "test": 0.1}}}, "sum to 1"),
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
])
def test_bad_sheet_names_the_row(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_tracks(write_sheet(tmp_path, text))
