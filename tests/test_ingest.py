"""ingest: real yt-dlp against a loopback HTTP server, real ffmpeg on generated files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from loopback import free_port_url, make_tone, serve_dir, write_rss

from soloist import ingest as ing
from soloist import io
from soloist.config import validate_config


def cfg(**changes) -> dict:
    """The ingest config section with ``changes``, defaults filled by the schema."""
    return validate_config({"ingest": {"ytdlp": {"retries": 0, "socket_timeout": 5},
                                       **changes}})["ingest"]


SETTINGS = cfg()


def run(tmp_path: Path, kind: str, source, settings=SETTINGS, track="t", **kw) -> dict:
    audio_out, info_out = tmp_path / f"out/{track}.flac", tmp_path / f"out/{track}.json"
    info = ing.ingest(
        track, kw.pop("row", "t"), kind, str(source), audio_out, info_out, settings,
        tmp_path / "downloads", **kw,
    )  # fmt: skip
    assert io.read_json(info_out) == info
    assert audio_out.exists()
    if info["ok"]:
        data, sr = sf.read(audio_out, always_2d=True)
        assert sr == 44100 and data.shape[1] == 2
        assert sf.info(audio_out).subtype == "PCM_16"
        info["_audio"] = data.T
    else:
        assert audio_out.stat().st_size == 0
        assert info["stage"] == "ingest" and info["track"] == track and info["kind"] == kind
    return info


def failure(tmp_path: Path, kind: str, source, **kw) -> str:
    info = run(tmp_path, kind, source, **kw)
    assert info["ok"] is False, info
    return info["reason"]


def resolved(tmp_path: Path, row: str, url: str) -> tuple[Path, list[dict]]:
    tsv = tmp_path / f"resolved/{row}.tsv"
    ing.resolve(row, url, tsv, SETTINGS["ytdlp"])
    assert tsv.read_text().splitlines()[0] == "track\turl\ttitle\terror"
    return tsv, ing.read_resolved(tsv)


# ---------------------------------------------------------------- URLs


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    make_tone(root / "song.mp3", 2.0)
    make_tone(root / "ep1.mp3", 1.5, freq=330)
    make_tone(root / "ep2.mp3", 2.5, freq=550)
    with serve_dir(root) as base:
        write_rss(root / "feed.xml", base, ["ep1.mp3", "ep2.mp3"])
        yield base


def test_single_url_then_cache(tmp_path, site):
    url = f"{site}/song.mp3"
    tsv, rows = resolved(tmp_path, "r1", url)
    assert rows == [{"track": "r1", "url": url, "title": "song", "error": ""}]

    info = run(tmp_path, "url", url, track="r1", row="r1", resolved_tsv=tsv)
    assert info["ok"], info
    assert info["title"] == "song" and info["url"] == url
    assert info["sha256"] == io.sha256_file(site.directory / "song.mp3")
    assert info["duration"] == pytest.approx(2.0, abs=0.1)
    assert info["_audio"].shape[1] == pytest.approx(2.0 * 44100, abs=0.1 * 44100)
    assert info["sample_rate_in"] == 44100 and info["channels_in"] == 2
    cache = ing.url_cache_dir(url, tmp_path / "downloads")
    assert io.read_json(cache / "info.json")["title"] == "song"

    requests = len(site.requests)
    again = run(tmp_path, "url", url, track="r1", row="r1", resolved_tsv=tsv)
    assert len(site.requests) == requests  # served from the cache
    assert again["sha256"] == info["sha256"]


def test_rss_feed_expands_to_entries(tmp_path, site):
    tsv, rows = resolved(tmp_path, "pod", f"{site}/feed.xml")
    assert [r["track"] for r in rows] == ["pod.001", "pod.002"]
    assert [r["url"] for r in rows] == [f"{site}/ep1.mp3", f"{site}/ep2.mp3"]
    assert [r["title"] for r in rows] == ["Episode 1", "Episode 2"]
    for r, seconds in zip(rows, (1.5, 2.5), strict=True):
        info = run(tmp_path, "url", f"{site}/feed.xml", track=r["track"], row="pod",
                   resolved_tsv=tsv)  # fmt: skip
        assert info["ok"], info
        assert info["title"] == r["title"]
        assert info["duration"] == pytest.approx(seconds, abs=0.1)


@pytest.mark.parametrize(
    "make_url, reason",
    [
        (lambda site: f"{site}/missing.mp3", "HTTP Error 404: Not Found"),
        (lambda site: free_port_url(), "connection refused"),
    ],
    ids=["404", "dead"],
)
def test_bad_urls(tmp_path, site, make_url, reason):
    url = make_url(site)
    tsv, rows = resolved(tmp_path, "bad", url)
    assert rows == [{"track": "bad", "url": url, "title": "", "error": reason}]
    assert failure(tmp_path, "url", url, track="bad", row="bad", resolved_tsv=tsv) == reason


def test_known_duration_is_rejected_before_download(tmp_path, site):
    # A page whose JSON-LD gives the duration: yt-dlp's match_filter sees it up front.
    page = site.directory / "long.html"
    page.write_text(
        '<html><head><script type="application/ld+json">{"@context": "https://schema.org", '
        f'"@type": "AudioObject", "name": "Long talk", "contentUrl": "{site}/song.mp3", '
        '"duration": "PT4000S"}</script></head><body></body></html>'
    )
    url = f"{site}/long.html"
    tsv, _ = resolved(tmp_path, "long", url)
    reason = failure(tmp_path, "url", url, track="long", row="long", resolved_tsv=tsv)
    assert reason == "duration 4000 s above ingest.max_seconds=3600"
    assert not list((tmp_path / "downloads").iterdir())  # nothing cached


def test_download_error_without_resolve_error(tmp_path, site):
    # The URL resolved fine earlier but is gone when ingest downloads it.
    tsv = tmp_path / "r.tsv"
    tsv.write_text(f"track\turl\ttitle\terror\nr\t{site}/gone.mp3\tgone\t\n")
    reason = failure(tmp_path, "url", "x", track="r", row="r", resolved_tsv=tsv)
    assert reason == "HTTP Error 404: Not Found"


# ---------------------------------------------------------------- local files


def test_wav_and_mp3(tmp_path):
    wav = make_tone(tmp_path / "a.wav", 1.5)
    info = run(tmp_path, "file", wav)
    assert info["ok"], info
    assert info["title"] == "a" and info["sha256"] == io.sha256_file(wav)
    assert info["uploader"] is None and info["license"] is None
    # No gain change: the 0.3 sine survives 16-bit FLAC round trip.
    assert np.abs(info["_audio"]).max() == pytest.approx(0.3, abs=1e-3)
    assert info["_audio"].shape[1] == int(1.5 * 44100)

    mp3 = make_tone(tmp_path / "b.mp3", 1.5)
    info = run(tmp_path, "file", mp3, track="b")
    assert info["ok"], info
    assert info["duration"] == pytest.approx(1.5, abs=0.1)


def test_mono_22k_is_converted(tmp_path):
    info = run(tmp_path, "file", make_tone(tmp_path / "m.wav", 1.2, 22050, channels=1))
    assert info["ok"], info
    assert (info["sample_rate_in"], info["channels_in"]) == (22050, 1)
    audio = info["_audio"]
    assert audio.shape[1] == pytest.approx(1.2 * 44100, abs=2)
    np.testing.assert_array_equal(audio[0], audio[1])
    assert np.abs(audio).max() == pytest.approx(0.3, abs=5e-3)  # mono copied, not -3 dB


def test_a_demo_song_enters_as_its_mixture_or_its_true_stems(tmp_path):
    from soloist.synth import make_song

    truth = make_song("d", tmp_path / "d", seconds=5)
    mixture = run(tmp_path, "demo", tmp_path / "d/mixture.flac", track="m")
    stems = run(tmp_path, "demo", tmp_path / "d/stems", track="s")
    for info in (mixture, stems):  # and its truth comes along, to score the clip stage
        assert info["ok"] and info["kind"] == "demo" and info["title"] == "d"
        assert info["solo_intervals"] == truth["solo_intervals"]
    assert mixture["stems"] is None and sorted(stems["stems"]) == ["bass", "drums", "other",
                                                                    "piano"]
    a, _ = sf.read(tmp_path / "out/m.flac")
    b, _ = sf.read(tmp_path / "out/s.flac")
    assert np.abs(a - b).max() < 2e-4  # the stems sum to the mixture (16-bit each)


def test_local_failures(tmp_path):
    tone = make_tone
    cases = {
        "low_rate": (tone(tmp_path / "low.wav", 1.2, 8000), None,
                     "sample rate 8000 Hz below ingest.min_sample_rate=16000 (low.wav)"),
        "six_channels": (tone(tmp_path / "six.wav", 1.2, channels=6), None,
                         "6 channels; at most ingest.max_channels=2 are supported (six.wav)"),
        "silent": (tone(tmp_path / "silent.wav", 1.2, freq=0), None,
                   "silent: peak -inf dBFS below ingest.silence_db=-60"),
        "too_long": (tone(tmp_path / "long.wav", 3.0), {"max_seconds": 2},
                     "duration 3 s above ingest.max_seconds=2"),
        "too_short": (tone(tmp_path / "short.wav", 0.5), None,
                      "duration 0.50 s below ingest.min_seconds=1"),
        "missing": (tmp_path / "nope.wav", None, f"file not found: {tmp_path / 'nope.wav'}"),
    }  # fmt: skip
    for name, (path, changes, reason) in cases.items():
        settings = cfg(**(changes or {}))
        assert failure(tmp_path, "file", path, track=name, settings=settings) == reason, name


def test_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.mp3"
    bad.write_bytes(b"this is not audio " * 200)
    reason = failure(tmp_path, "file", bad)
    assert reason.startswith("cannot decode corrupt.mp3: "), reason
    assert len(reason) > len("cannot decode corrupt.mp3: ") and "\n" not in reason


def corrupted_mp3(tmp_path: Path, keep: str, tail: bytes) -> Path:
    """A real 3 s MP3 with all but its ID3 tag (``keep="tag"``) or its first 1000 bytes
    (the tag, the Info frame that states the duration, a frame or two) replaced by ``tail``."""
    good = make_tone(tmp_path / "good.mp3", 3.0).read_bytes()
    assert good[:3] == b"ID3"
    tag = 10 + sum(byte << (7 * (3 - i)) for i, byte in enumerate(good[6:10]))  # syncsafe
    bad = tmp_path / "corrupt.mp3"
    bad.write_bytes(good[:tag if keep == "tag" else 1000] + tail)
    return bad


@pytest.mark.parametrize("tail", [np.random.default_rng(0).bytes(100_000), bytes(100_000),
                                  b"this is not audio " * 6000], ids=["random", "zeros", "text"])
def test_mp3_tag_before_garbage_cannot_decode(tmp_path, tail):
    # over 64 KiB without a frame: ffprobe "reads" it, an mp3 stream of 0 Hz and 0 channels
    reason = failure(tmp_path, "file", corrupted_mp3(tmp_path, "tag", tail))
    assert reason == ("cannot decode corrupt.mp3: no audio stream ffprobe can read "
                      "(no frame of mp3 found)")


def test_mp3_whose_frames_are_garbage_cannot_decode(tmp_path):
    # ffprobe promises seconds, a few ms decode: broken, not "below ingest.min_seconds"
    reason = failure(tmp_path, "file", corrupted_mp3(tmp_path, "head", bytes(100_000)))
    assert re.fullmatch(r"cannot decode corrupt\.mp3: only 0\.\d\d s of its \d\.\d\d s decodes",
                        reason), reason


def test_probe_and_load_audio(tmp_path):
    meta = io.probe(make_tone(tmp_path / "p.flac", 1.0, 48000, channels=1))
    assert meta["sample_rate"] == 48000 and meta["channels"] == 1
    assert meta["duration"] == pytest.approx(1.0, abs=0.01)
    audio = io.load_audio(tmp_path / "p.flac", 44100)
    assert audio.dtype == np.float32 and audio.shape == (2, 44100)
    with pytest.raises(io.TrackError, match="file not found"):
        io.probe(tmp_path / "missing.flac")


def test_unknown_kind_and_missing_tsv_line(tmp_path):
    assert failure(tmp_path, "cassette", "x").startswith("unknown ingest kind 'cassette'")
    tsv = tmp_path / "r.tsv"
    tsv.write_text("track\turl\ttitle\terror\n")
    assert failure(tmp_path, "url", "u", resolved_tsv=tsv) == "track t not listed in r.tsv"


# ---------------------------------------------------------------- stems


def test_stems_folder_sums_stems(tmp_path):
    folder = tmp_path / "song"
    for name, freq in (("drums", 200), ("bass", 300), ("other", 500)):
        make_tone(folder / f"{name}.flac", 1.5, freq=freq, amplitude=0.2)
    info = run(tmp_path, "stems", folder)
    assert info["ok"], info
    assert info["stems"] == ["bass", "drums", "other"] and info["title"] == "song"
    expected = sum(io.read_audio(folder / f"{n}.flac")[0] for n in info["stems"])
    np.testing.assert_allclose(info["_audio"], expected, atol=2e-4)

    make_tone(folder / "mixture.wav", 1.2, freq=700)
    info = run(tmp_path, "stems", folder, track="with_mix")
    assert info["ok"] and info["stems"] == ["bass", "drums", "other"]
    assert info["sha256"] == io.sha256_file(folder / "mixture.wav")
    assert info["_audio"].shape[1] == int(1.2 * 44100)


def test_stems_failures(tmp_path):
    assert failure(tmp_path, "stems", tmp_path / "none").startswith("stems folder not found")
    (tmp_path / "empty").mkdir()
    assert failure(tmp_path, "stems", tmp_path / "empty").startswith("no audio files")


def test_unexpected_errors_are_recorded(tmp_path):
    # A settings value of the wrong type is a bug, not bad input: still recorded, not raised.
    wav = make_tone(tmp_path / "a.wav", 1.2)
    reason = failure(tmp_path, "file", wav, settings=cfg() | {"min_sample_rate": "high"})
    assert reason.startswith("TypeError: "), reason
