"""fetch_weights: random-init models in the real layouts; clear errors offline or on tampering."""

import json
import math
import shutil

import pytest
import torch
from loopback import free_port_url
from safetensors.torch import save_file

from soloist import fetch_weights as fw
from soloist import weights
from soloist.io import read_json, sha256_file
from soloist.weights import CODECS


def test_random_weights_load_with_the_real_loaders(random_weights):
    demucs = weights.load_demucs(random_weights / "random/demucs/htdemucs_6s.json")
    assert demucs.sources == ["drums", "bass", "other", "vocals", "guitar", "piano"]
    assert sum(p.numel() for p in demucs.parameters()) > 20e6  # the real architecture
    manifest = read_json(random_weights / "random/codec/encodec_24khz.json")
    assert manifest["random"] is True and "NOT musically meaningful" in manifest["warning"]
    # the Hub's layout, which transformers' from_pretrained reads
    assert set(manifest["files"]) == {"encodec_24khz/config.json",
                                      "encodec_24khz/model.safetensors"}


@pytest.mark.parametrize("name", CODECS)
def test_random_codec_codes_are_not_degenerate(name, codec_manifests):
    codec = weights.load_codec(codec_manifests[name])
    rate = codec.sample_rate
    t = torch.arange(rate * 2) / rate
    audio = (0.3 * torch.sin(2 * torch.pi * 220 * t * (1 + t)) + 0.02 * torch.randn(t.shape))
    codes = codec.encode(audio[None, None])[0]  # [K, T]
    assert codes.shape == (CODECS[name].codebooks, math.ceil(2 * rate / codec.hop))
    distinct = [len(torch.unique(c)) for c in codes]
    assert all(d >= 4 for d in distinct), distinct  # all-zero codebooks would give 1


def test_random_encodec_codes_describe_the_sound_not_its_past(random_weights):
    """Like a trained codec's: silence has one code, and a sound gets the same codes after a
    second of silence whatever was played before it (a random LSTM would remember)."""
    codec = weights.load_codec(random_weights / "random/codec/encodec_24khz.json")
    t = torch.arange(24000) / 24000
    sound = 0.3 * torch.sin(2 * torch.pi * 330 * t) * torch.exp(-3 * t)
    pasts = [0.3 * torch.randn(24000, generator=torch.Generator().manual_seed(0)),
             0.5 * torch.sin(2 * torch.pi * 110 * t)]
    codes = [codec.encode(torch.cat([p, torch.zeros(24000), sound])[None, None])[0]
             for p in pasts]  # [K, 225] each: 75 frames a second
    assert torch.equal(codes[0][:, 95:], codes[1][:, 95:])  # from 0.27 s into the silence
    assert all(len(torch.unique(c)) == 1 for c in codes[0][:, 95:150])


def test_random_weights_are_deterministic(tmp_path, random_weights):
    info = fw.fetch_weights("codec", "encodec_24khz", "random",
                            tmp_path / "random/codec/encodec_24khz.json")
    expected = read_json(random_weights / "random/codec/encodec_24khz.json")["files"]
    assert info["files"] == expected


def test_tampered_weights_are_refused(tmp_path, random_weights):
    folder = tmp_path / "random/codec"
    shutil.copytree(random_weights / "random/codec", folder)
    with open(folder / "encodec_24khz/model.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(weights.WeightsError, match="changed since it was fetched.*--forcerun"):
        weights.load_codec(folder / "encodec_24khz.json")
    (folder / "encodec_24khz/config.json").unlink()
    with pytest.raises(weights.WeightsError,
                       match="encodec_24khz/config.json is missing.*--forcerun"):
        weights.load_codec(folder / "encodec_24khz.json")


def test_demucs_file_naming_a_foreign_class_is_refused(tmp_path):
    # demucs' loader would import and call whatever class the file names
    save_file({"w": torch.zeros(1)}, str(tmp_path / "abcd1234.safetensors"),
              metadata={"klass": "os.system", "args": '["true"]', "kwargs": "{}"})
    (tmp_path / "evil.yaml").write_text("models: [abcd1234]\n")
    files = {f: sha256_file(tmp_path / f) for f in ("evil.yaml", "abcd1234.safetensors")}
    (tmp_path / "evil.json").write_text(json.dumps(
        {"family": "demucs", "name": "evil", "mode": "pretrained", "random": False,
         "files": files}))
    with pytest.raises(weights.WeightsError, match="names model class 'os.system'"):
        weights.load_demucs(tmp_path / "evil.json")


def test_offline_pretrained_fails_at_once_naming_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setattr(fw, "HUB", free_port_url("/{repo}/{file}"))
    with pytest.raises(weights.WeightsError) as err:
        fw.fetch_weights("codec", "encodec_32khz", "pretrained",
                         tmp_path / "pretrained/codec/encodec_32khz.json")
    message = str(err.value)
    assert "cannot download pretrained weights" in message
    assert f"{tmp_path}/pretrained/codec/encodec_32khz/model.safetensors  <-  " in message
    assert "/facebook/encodec_32khz/model.safetensors" in message
    assert "--config weights=random" in message
    assert not (tmp_path / "pretrained/codec/encodec_32khz.json").exists()


@pytest.mark.parametrize("name", CODECS)
def test_pretrained_folder_placed_by_hand_loads_like_real_weights(name, tmp_path, codec_manifests,
                                                                  monkeypatch):
    """A pretend-pretrained folder (random weights in the Hub's layout, copied where the
    README says) goes through the path real weights take: no download, from_pretrained."""
    monkeypatch.setattr(fw, "HUB", free_port_url("/{repo}/{file}"))  # would fail if asked
    src = codec_manifests[name].parent / name
    folder = tmp_path / "pretrained/codec"
    shutil.copytree(src, folder / name)
    info = fw.fetch_weights("codec", name, "pretrained", folder / f"{name}.json")
    assert info["random"] is False
    assert info["files"] == {f"{name}/{f}": sha256_file(src / f) for f in weights.HF_FILES}
    codec = weights.load_codec(folder / f"{name}.json")
    assert type(codec.model).__name__ == ("DacModel" if "dac" in name else "EncodecModel")
    assert codec.sample_rate == CODECS[name].sample_rate
    random = weights.load_codec(codec_manifests[name])
    assert all(torch.equal(a, b) for a, b in zip(codec.model.state_dict().values(),
                                                  random.model.state_dict().values(),
                                                  strict=True))


MODELS = {"demucs": "htdemucs_6s", "codec": "encodec_24khz"}


def test_auto_takes_random_weights_offline_only_for_a_demo_sheet(tmp_path, monkeypatch):
    monkeypatch.setattr(fw, "HUB", free_port_url("/{repo}/{file}"))
    assert fw.weights_mode("auto", MODELS, tmp_path, demo_only=True)[0] == "random"
    # real recordings: pretrained, so that fetch_weights says how to get the files
    assert fw.weights_mode("auto", MODELS, tmp_path, demo_only=False)[0] == "pretrained"
    assert fw.weights_mode("random", MODELS, tmp_path, demo_only=False)[0] == "random"


def test_auto_takes_pretrained_weights_that_are_here_or_can_be_downloaded(tmp_path, monkeypatch):
    from loopback import serve_dir

    hub = tmp_path / "hub"
    for file in ("adefossez/HTDemucs-6s/htdemucs_6s.yaml", "facebook/encodec_24khz/config.json"):
        (hub / file).parent.mkdir(parents=True, exist_ok=True)
        (hub / file).write_text("weights")
    with serve_dir(hub) as base_url:
        monkeypatch.setattr(fw, "HUB", base_url + "/{repo}/{file}")
        mode, why = fw.weights_mode("auto", MODELS, tmp_path, demo_only=True)
        assert (mode, why) == ("pretrained", "weights: auto, pretrained weights can be downloaded")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub's own switch is respected
        assert fw.weights_mode("auto", MODELS, tmp_path, demo_only=True)[0] == "random"
    for family, file in (("demucs", "htdemucs_6s.json"), ("codec", "encodec_24khz.json")):
        (tmp_path / "pretrained" / family).mkdir(parents=True)
        (tmp_path / "pretrained" / family / file).write_text("{}")  # fetched before
    mode, why = fw.weights_mode("auto", MODELS, tmp_path, demo_only=True)
    assert mode == "pretrained" and "are in" in why
