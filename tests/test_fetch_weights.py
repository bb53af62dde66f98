"""fetch_weights: random-init models in the real layouts; clear errors offline or on tampering."""

import json

import pytest
import torch
from loopback import free_port_url
from safetensors.torch import save_file

from soloist import fetch_weights as fw
from soloist import weights
from soloist.io import read_json, sha256_file


def test_random_weights_load_with_the_real_loaders(random_weights):
    demucs = weights.load_demucs(random_weights / "random/demucs/htdemucs_6s.json")
    assert demucs.sources == ["drums", "bass", "other", "vocals", "guitar", "piano"]
    assert sum(p.numel() for p in demucs.parameters()) > 20e6  # the real architecture
    manifest = read_json(random_weights / "random/encodec/encodec_24khz.json")
    assert manifest["random"] is True and "NOT musically meaningful" in manifest["warning"]
    assert set(manifest["files"]) == {"encodec_24khz-d7cc33bc.th"}


def test_random_encodec_codes_are_not_degenerate(random_weights):
    model = weights.load_encodec(random_weights / "random/encodec/encodec_24khz.json", 3.0)
    t = torch.arange(24000 * 2) / 24000
    audio = (0.3 * torch.sin(2 * torch.pi * 220 * t * (1 + t)) + 0.02 * torch.randn(t.shape))
    codes = model.encode(audio[None, None])[0][0][0]  # [K, T]
    assert codes.shape == (4, 150)
    distinct = [len(torch.unique(c)) for c in codes]
    assert all(d >= 4 for d in distinct), distinct  # all-zero codebooks would give 1


def test_random_encodec_codes_describe_the_sound_not_its_past(random_weights):
    """Like a trained codec's: silence has one code, and a sound gets the same codes after a
    second of silence whatever was played before it (a random LSTM would remember)."""
    model = weights.load_encodec(random_weights / "random/encodec/encodec_24khz.json", 3.0)
    t = torch.arange(24000) / 24000
    sound = 0.3 * torch.sin(2 * torch.pi * 330 * t) * torch.exp(-3 * t)
    pasts = [0.3 * torch.randn(24000, generator=torch.Generator().manual_seed(0)),
             0.5 * torch.sin(2 * torch.pi * 110 * t)]
    codes = [model.encode(torch.cat([p, torch.zeros(24000), sound])[None, None])[0][0][0]
             for p in pasts]  # [K, 225] each: 75 frames a second
    assert torch.equal(codes[0][:, 95:], codes[1][:, 95:])  # from 0.27 s into the silence
    assert all(len(torch.unique(c)) == 1 for c in codes[0][:, 95:150])


def test_random_weights_are_deterministic(tmp_path, random_weights):
    info = fw.fetch_weights("encodec", "encodec_24khz", "random",
                            tmp_path / "random/encodec/encodec_24khz.json")
    expected = read_json(random_weights / "random/encodec/encodec_24khz.json")["files"]
    assert info["files"] == expected


def test_tampered_weights_are_refused(tmp_path, random_weights):
    folder = tmp_path / "random/encodec"
    folder.mkdir(parents=True)
    for f in (random_weights / "random/encodec").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    with open(folder / "encodec_24khz-d7cc33bc.th", "ab") as f:
        f.write(b"x")
    with pytest.raises(weights.WeightsError, match="changed since it was fetched.*--forcerun"):
        weights.load_encodec(folder / "encodec_24khz.json", 3.0)
    (folder / "encodec_24khz-d7cc33bc.th").unlink()
    with pytest.raises(weights.WeightsError, match="is missing.*--forcerun"):
        weights.load_encodec(folder / "encodec_24khz.json", 3.0)


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
    monkeypatch.setattr(fw, "ENCODEC_URL", free_port_url("/{file}"))
    with pytest.raises(weights.WeightsError) as err:
        fw.fetch_weights("encodec", "encodec_24khz", "pretrained",
                         tmp_path / "pretrained/encodec/encodec_24khz.json")
    message = str(err.value)
    assert "cannot download pretrained weights" in message
    assert str(tmp_path / "pretrained/encodec/encodec_24khz-d7cc33bc.th") in message
    assert "--config weights=random" in message
    assert not (tmp_path / "pretrained/encodec/encodec_24khz.json").exists()


def test_pretrained_files_placed_by_hand_are_used_without_download(tmp_path, random_weights,
                                                                   monkeypatch):
    monkeypatch.setattr(fw, "ENCODEC_URL", free_port_url("/{file}"))  # would fail if asked
    folder = tmp_path / "pretrained/encodec"
    folder.mkdir(parents=True)
    src = random_weights / "random/encodec/encodec_24khz-d7cc33bc.th"
    (folder / src.name).write_bytes(src.read_bytes())
    info = fw.fetch_weights("encodec", "encodec_24khz", "pretrained",
                            folder / "encodec_24khz.json")
    assert info["random"] is False and info["files"][src.name] == sha256_file(src)


MODELS = {"demucs": "htdemucs_6s", "encodec": "encodec_24khz"}


def test_auto_takes_random_weights_offline_only_for_a_demo_sheet(tmp_path, monkeypatch):
    monkeypatch.setattr(fw, "ENCODEC_URL", free_port_url("/{file}"))
    monkeypatch.setattr(fw, "DEMUCS_HF", free_port_url("/{repo}/{file}"))
    assert fw.weights_mode("auto", MODELS, tmp_path, demo_only=True)[0] == "random"
    # real recordings: pretrained, so that fetch_weights says how to get the files
    assert fw.weights_mode("auto", MODELS, tmp_path, demo_only=False)[0] == "pretrained"
    assert fw.weights_mode("random", MODELS, tmp_path, demo_only=False)[0] == "random"


def test_auto_takes_pretrained_weights_that_are_here_or_can_be_downloaded(tmp_path, monkeypatch):
    from loopback import serve_dir

    hub = tmp_path / "hub"
    for file in ("HTDemucs-6s/htdemucs_6s.yaml", "encodec_24khz-d7cc33bc.th"):
        (hub / file).parent.mkdir(parents=True, exist_ok=True)
        (hub / file).write_text("weights")
    with serve_dir(hub) as base_url:
        monkeypatch.setattr(fw, "ENCODEC_URL", base_url + "/{file}")
        monkeypatch.setattr(fw, "DEMUCS_HF", base_url + "/{repo}/{file}")
        mode, why = fw.weights_mode("auto", MODELS, tmp_path, demo_only=True)
        assert (mode, why) == ("pretrained", "weights: auto, pretrained weights can be downloaded")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub's own switch is respected
        assert fw.weights_mode("auto", MODELS, tmp_path, demo_only=True)[0] == "random"
    for family, file in (("demucs", "htdemucs_6s.json"), ("encodec", "encodec_24khz.json")):
        (tmp_path / "pretrained" / family).mkdir(parents=True)
        (tmp_path / "pretrained" / family / file).write_text("{}")  # fetched before
    mode, why = fw.weights_mode("auto", MODELS, tmp_path, demo_only=True)
    assert mode == "pretrained" and "are in" in why
