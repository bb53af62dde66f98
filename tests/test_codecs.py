"""Each codec through the DAG: tokenize -> shards -> the loader -> training -> generated audio.

The default codec (encodec_24khz) runs in the end-to-end run of test_workflow; here the
others, on two short demo songs with random weights in the Hub's layout.
"""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from conftest import snakemake, with_weights, workflow_copy

from soloist.config import batch_of
from soloist.io import read_json, read_npy
from soloist.model import Soloist
from soloist.weights import CODECS

# two songs of 20 s; 4 s windows; a few training steps
CONFIG = {"tracks": "tracks.tsv", "weights": "random", "demo": {"seconds": 20},
          "clip": {"seconds": 4, "hop": 2.0},
          "train": {"steps": 2, "batch_size": 2, "seconds": 2, "workers": 0, "eval_every": 2,
                    "checkpoint_every": 2, "warmup_steps": 1, "epoch_batches": 4},
          "evaluate": {"examples": 1, "batches": 1, "seconds": 2}}


@pytest.mark.parametrize("name", ["encodec_32khz", "dac_44khz"])
def test_codec_through_the_dag(name, tmp_path, random_weights, codec_manifests):
    spec = CODECS[name]
    workflow_copy(tmp_path)
    with_weights(tmp_path, random_weights)
    shutil.copytree(codec_manifests[name].parent, tmp_path / "resources/weights/random/codec",
                    dirs_exist_ok=True)
    (tmp_path / "tracks.tsv").write_text("track\tsource\tsplit\nsong1\tdemo:song1\ttrain\n"
                                         "song2\tdemo:song2\ttest\n")
    snakemake(tmp_path, "evaluate", config=CONFIG | {"tokenize": {"model": name}})
    frame_rate = spec.sample_rate / codec_hop(name)
    # tokens: [K, T] of the codec's K and cardinality at its frame rate, for the whole track
    tokens = tmp_path / f"results/tokenize/{batch_of('song1', 8)}/song1"
    status = read_json(tokens / "tokens.json")
    assert (status["model"], status["codebooks"], status["cardinality"]) == \
        (name, spec.codebooks, 2048 if name == "encodec_32khz" else 1024)
    assert status["frame_rate"] == pytest.approx(frame_rate)
    codes = read_npy(tokens / "target.npy")
    assert codes.shape == (spec.codebooks, math.ceil(20 * frame_rate))
    assert 0 <= codes.min() and codes.max() < status["cardinality"]
    # shards: the manifest and stats say which codec; samples are 4 s at its frame rate
    stats = read_json(tmp_path / "results/shards/stats.json")
    assert stats["codec"]["model"] == name and stats["frame_rate"] == pytest.approx(frame_rate)
    shard = sorted((tmp_path / "results/shards/train").glob("*.tar"))[0]
    sample = next(iter(wds.WebDataset(str(shard), shardshuffle=False)))
    context = np.load(io.BytesIO(sample["context.npy"]), allow_pickle=False)
    assert context.shape == (spec.codebooks, round(4 * frame_rate))
    assert json.loads(sample["json"])["codec"] == name
    # the model's embeddings, heads and window come from the data
    model = Soloist.from_pretrained(tmp_path / "results/train")
    assert (model.cfg.codebooks, model.cfg.card) == (spec.codebooks, status["cardinality"])
    assert model.cfg.max_frames == round(2 * frame_rate)
    assert read_json(tmp_path / "results/train/train.json")["steps"] == 2
    # generation decodes through the same codec, at its rate
    info = sf.info(tmp_path / "results/evaluate/examples/00_generated.wav")
    assert info.samplerate == spec.sample_rate
    assert info.frames == round(2 * frame_rate) * codec_hop(name)


def codec_hop(name: str) -> int:
    """Samples per frame of the codec's published architecture."""
    return {"encodec_24khz": 320, "encodec_32khz": 640, "dac_44khz": 512}[name]
