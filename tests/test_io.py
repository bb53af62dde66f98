"""io: audio read in parallel pieces equals a plain read; prefetch keeps order and errors."""

import threading

import numpy as np
import pytest
import soundfile as sf

from soloist.io import prefetch, read_audio, read_pcm16, write_audio


def test_pieces_read_what_a_plain_read_reads(tmp_path):
    rng = np.random.default_rng(0)
    write_audio(tmp_path / "a.flac", 0.3 * rng.standard_normal((2, 44100 * 3 + 17)), 44100)
    whole, rate = read_audio(tmp_path / "a.flac")
    pieces, _ = read_audio(tmp_path / "a.flac", piece_seconds=0.37)  # ragged last piece
    assert rate == 44100 and whole.shape == (2, 44100 * 3 + 17)
    np.testing.assert_array_equal(pieces, whole)
    write_audio(tmp_path / "b.flac", 0.3 * rng.standard_normal((1, 9000)), 22050)
    (pcm, _), (short, short_rate) = read_pcm16([tmp_path / "a.flac", tmp_path / "b.flac"],
                                               piece_seconds=0.37)
    assert pcm.dtype == np.int16 and pcm.shape == whole.T.shape
    np.testing.assert_array_equal(pcm.T / np.float32(32768), whole)
    assert short_rate == 22050
    np.testing.assert_array_equal(short.T / np.float32(32768), read_audio(tmp_path / "b.flac")[0])


def test_pieces_of_a_truncated_file_fail(tmp_path):
    write_audio(tmp_path / "a.flac", np.zeros((1, 44100 * 2)) + 0.1, 44100)
    data = (tmp_path / "a.flac").read_bytes()
    (tmp_path / "b.flac").write_bytes(data[:len(data) // 2])
    with pytest.raises(sf.LibsndfileError):
        read_audio(tmp_path / "b.flac", piece_seconds=0.5)


def test_prefetch_keeps_order_and_hands_back_errors():
    def work(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x * x

    got = list(prefetch(work, range(6), workers=3, ahead=2))
    assert [item for item, _, _ in got] == list(range(6))
    assert [r for _, r, e in got if e is None] == [0, 1, 4, 16, 25]
    (error,) = [e for _, _, e in got if e is not None]
    assert isinstance(error, ValueError) and str(error) == "three"


def test_prefetch_starts_before_the_first_next():
    started = threading.Event()
    got = prefetch(lambda x: started.set() or x, [7])
    assert started.wait(timeout=30), "nothing was computed before the caller asked"
    assert list(got) == [(7, 7, None)]
