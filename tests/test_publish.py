"""publish: the model folder and its card, and the upload to a (loopback) Hugging Face Hub."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import snakemake
from loopback import serve_hub

from soloist.io import read_json
from soloist.model import Soloist
from soloist.publish import _codec_licence


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No Hugging Face token anywhere: not in the environment, not in a token file."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def test_publish_writes_a_model_folder_with_its_card(done, no_token):
    snakemake(done, "publish")
    folder = done / "results/publish"
    published, trained = (Soloist.from_pretrained(f) for f in (folder, done / "results/train"))
    codes = torch.randint(0, 1024, (2, 4, 40), generator=torch.Generator().manual_seed(0))
    assert torch.equal(published(codes, codes)[2], trained(codes, codes)[2])
    assert published.info == trained.info

    text = (folder / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    # the run tokenized with the shipped codec, whose weights are MIT, as soloist is
    assert front["license"] == "mit" and front["library_name"] == "soloist"
    assert "random-weights" in front["tags"]
    metrics = read_json(done / "results/evaluate/metrics.json")
    for words in ("NOT musically meaningful", "trained on own_demo tokens, whose pretrained "
                  "weights are MIT", "The separator, Demucs, is MIT code",
                  "soloist accompany my_backing.mp3 --model results/publish",
                  "Does it listen?", f"| listen_ratio | {metrics['listen_ratio']:.4f} |",
                  "tracks synthesized by soloist's demo corpus",
                  "downloaded with yt-dlp: licence not known",
                  "examples/00_mix.wav",
                  f"| {metrics['fit']['truth']['generated']['in_scale']:.4f} |",
                  "fit: in_scale (real solo ", "fit: in_key (real solo "):
        assert words in text, words
    assert (folder / "examples/00_mix.wav").read_bytes() == \
        (done / "results/evaluate/examples/00_mix.wav").read_bytes()
    licence, why = _codec_licence("encodec_24khz")  # a model of the Hub's EnCodec's tokens
    assert licence == "cc-by-nc-4.0" and "non-commercial" in why


def test_publish_without_a_token_stops_before_any_job(done, no_token):
    proc = snakemake(done, "publish", "--forcerun", "publish",
                     config={"publish": {"repo_id": "me/soloist"}}, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "publish.repo_id is 'me/soloist' but there is no Hugging Face token" in output
    assert "rule publish" not in output  # no job started


def test_publish_uploads_the_folder_with_the_token(done, monkeypatch, tmp_path):
    with serve_hub() as (endpoint, hub):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_loopback")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        snakemake(done, "publish", "--forcerun", "publish",
                  config={"publish": {"repo_id": "me/soloist"}})
    folder = done / "results/publish"
    local = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
             if p.is_file() and p.name != ".snakemake_timestamp"}  # Snakemake's, written after
    assert hub.files["me/soloist"] == local and "model.safetensors" in local
    create = next(r for r in hub.requests if r[1] == "/api/repos/create")
    assert create[:3] == ("POST", "/api/repos/create", "Bearer hf_loopback")
    assert create[3]["visibility"] == "private"
    assert all(auth == "Bearer hf_loopback" for _, _, auth, _ in hub.requests)
    assert "--model me/soloist" in local["README.md"].decode()
