"""Do transformers' EncodecModel and the `encodec` package give the same codes on the same weights?

soloist tokenizes with transformers (Apache-2.0 code) instead of the `encodec` package
(CC-BY-NC 4.0 code). This checks the switch changes no token: the 24 kHz weights soloist
builds (random-init, codebooks from music, in the Hub's layout) are copied key by key into
the `encodec` package's own model, and both encode the same demo song at 1.5 to 24 kbps
and decode the codes back.

Needs the package, which soloist no longer installs:
    .venv/bin/pip install encodec==0.1.1 && .venv/bin/python bench/encodec_parity.py
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import torch
import torchaudio.functional as AF

from soloist.fetch_weights import fetch_weights
from soloist.io import read_audio
from soloist.synth import make_song
from soloist.weights import load_codec


def package_key(key: str, theirs: set[str]) -> str:
    """The `encodec` package's name of a transformers EncodecModel state-dict key."""
    key = re.sub(r"^(encoder|decoder)\.layers\.", r"\1.model.", key)
    key = re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.",
                 key)
    key = key.replace(".parametrizations.weight.original0", ".weight_g")
    key = key.replace(".parametrizations.weight.original1", ".weight_v")
    conv = key.replace(".conv.", ".conv.conv.", 1)
    return conv if conv in theirs else key.replace(".conv.", ".convtr.convtr.", 1)


def main() -> None:
    from encodec import EncodecModel as PackageModel

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "random/codec/encodec_24khz.json"
        fetch_weights("codec", "encodec_24khz", "random", manifest)
        ours = load_codec(manifest)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            package = PackageModel.encodec_model_24khz(pretrained=False).eval()
        theirs = set(package.state_dict())
        state = {package_key(k, theirs): v for k, v in ours.model.state_dict().items()}
        package.load_state_dict(state, strict=True)  # every key, none left over
        make_song("parity", tmp, seconds=30, seed=1)
        mono = read_audio(Path(tmp) / "mixture.flac")[0].mean(0)
    audio = AF.resample(torch.from_numpy(mono), 44100, 24000)[None, None]
    print(f"{'kbps':>6}{'K':>4}{'frames':>8}{'codes equal':>13}{'audio max |diff|':>18}")
    same = 0
    with torch.inference_mode():
        for kbps in (1.5, 3.0, 6.0, 12.0, 24.0):
            ours.codebooks = round(kbps * 1000 / 750)
            a = ours.encode(audio)  # [1, K, T]
            package.set_target_bandwidth(kbps)
            b = package.encode(audio)[0][0]  # [1, K, T]
            wave_a = ours.decode(a)[0]
            wave_b = package.decode([(b, None)])[0, 0]
            n = min(len(wave_a), len(wave_b))
            equal = torch.equal(a, b)
            same += equal
            diff = float((wave_a[:n] - wave_b[:n]).abs().max())
            print(f"{kbps:>6g}{a.shape[1]:>4}{a.shape[2]:>8}{str(equal):>13}{diff:>18.2e}")
    print(f"identical codes at {same} of 5 bandwidths")


if __name__ == "__main__":
    main()
