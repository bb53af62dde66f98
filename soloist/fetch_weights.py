"""The fetch_weights stage: download the real weights, or build random-init ones in the
same file layouts (``soloist.weights`` describes them and loads them).

Each model gets a manifest ``resources/weights/<mode>/<family>/<name>.json`` with the
sha256 of its files; loaders verify them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import yaml

from soloist.io import RANDOM_WARNING, atomic_path, read_audio, sha256_file, write_json
from soloist.synth import make_song
from soloist.weights import CODECS, HF_FILES, WeightsError, codec_model

log = logging.getLogger("soloist.fetch_weights")


HUB = "https://huggingface.co/{repo}/resolve/main/{file}"
# Architectures we can build with random weights: (the published signature, HTDemucs kwargs).
DEMUCS_ARCH = {
    "htdemucs_6s": ("5c90dfd2", {
        "sources": ["drums", "bass", "other", "vocals", "guitar", "piano"],
        "bottom_channels": 0, "segment": Fraction(39, 5), "channels": 48, "nfft": 4096,
        "depth": 4, "dconv_mode": 3, "t_layers": 5,
    }),
}


def pretrained_files(family: str, name: str) -> dict[str, str]:
    """{file: URL} of the pretrained weights of a model, as far as known in advance (a
    Demucs bag not listed here names its other files in its yaml: only the yaml)."""
    if family == "codec":
        return {f"{name}/{f}": HUB.format(repo=CODECS[name].repo, file=f) for f in HF_FILES}
    sigs = [DEMUCS_ARCH[name][0]] if name in DEMUCS_ARCH else []  # the published signature
    repo = "adefossez/" + ("HTDemucs" if name == "htdemucs"
                           else "HTDemucs-" + name.removeprefix("htdemucs_"))
    files = [f"{name}.yaml"] + [f"{s}.safetensors" for s in sigs]
    return {f: HUB.format(repo=repo, file=f) for f in files}


def _reachable(url: str, timeout: float) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except OSError:
        return False
    return True


def weights_mode(setting: str, models: dict[str, str], root: str | os.PathLike,
                 demo_only: bool, timeout: float = 5.0) -> tuple[str, str]:
    """``(pretrained | random, why)`` for the ``weights`` setting and ``models``
    {family: name}. ``auto`` takes the pretrained weights when their files are under
    ``root/pretrained/`` or their hosts answer; otherwise random ones when every track is
    a demo song, and else pretrained still, so that fetch_weights says how to get them."""
    if setting != "auto":
        return setting, f"weights: {setting}"
    root = Path(root) / "pretrained"
    urls = {family: pretrained_files(family, name) for family, name in models.items()}
    if all((root / family / f"{name}.json").is_file()  # fetched, or copied in by hand
           or all((root / family / f).is_file() for f in urls[family])
           for family, name in models.items()):
        return "pretrained", f"weights: auto, pretrained weights are in {root}"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    first = [next(iter(family_urls.values())) for family_urls in urls.values()]
    with ThreadPoolExecutor(len(first)) as pool:
        answers = list(pool.map(lambda u: not offline and _reachable(u, timeout), first))
    if all(answers):
        return "pretrained", "weights: auto, pretrained weights can be downloaded"
    if demo_only:
        return "random", ("weights: auto, no pretrained weights here and none can be "
                          "downloaded, every track is a demo song: RANDOM-INIT weights")
    return "pretrained", ("weights: auto, no pretrained weights here and none can be "
                          "downloaded; real recordings need them")


def fetch_weights(family: str, name: str, mode: str, manifest: str | os.PathLike,
                  seed: int = 0) -> dict:
    """Put model ``name`` of ``family`` (demucs|codec) beside ``manifest`` and write it."""
    folder = Path(manifest).parent
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "random":
        log.warning(RANDOM_WARNING)
        files = (_random_demucs if family == "demucs" else _random_codec)(name, folder, seed)
    elif mode == "pretrained":
        files = (_pretrained_demucs if family == "demucs" else _pretrained_codec)(name, folder)
    else:
        raise ValueError(f"weights mode must be pretrained or random, not {mode!r}")
    info = {
        "family": family, "name": name, "mode": mode, "random": mode == "random",
        "files": {f: sha256_file(folder / f) for f in files},
    }
    if mode == "random":
        info["warning"] = RANDOM_WARNING
    write_json(manifest, info)
    return info


def _download(urls: dict[str, str], folder: Path) -> list[str]:
    """Download ``{file: url}`` into ``folder`` unless present; one clear error when offline."""
    missing = {f: u for f, u in urls.items() if not (folder / f).is_file()}
    for file, url in missing.items():
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=30) as r, atomic_path(folder / file) as tmp:
                tmp.write_bytes(r.read())
        except OSError as e:
            wanted = "\n".join(f"  {folder / f}  <-  {u}" for f, u in urls.items())
            raise WeightsError(
                f"cannot download pretrained weights ({e}).\nEither:\n"
                f"  1. on a machine with internet, download these files and copy them here:\n"
                f"{wanted}\n"
                f"     then rerun; or\n"
                f"  2. run with random-init weights (tests/offline only, outputs are not "
                f"meaningful): snakemake --config weights=random"
            ) from None
    return sorted(urls)


def _pretrained_demucs(name: str, folder: Path) -> list[str]:
    urls = pretrained_files("demucs", name)
    if len(urls) == 1:  # the yaml names the signatures; fetch it first
        _download(urls, folder)
        yaml_url = urls[f"{name}.yaml"]
        sigs = yaml.safe_load((folder / f"{name}.yaml").read_text())["models"]
        urls |= {f"{s}.safetensors": yaml_url.replace(f"{name}.yaml", f"{s}.safetensors")
                 for s in sigs}
    return _download(urls, folder)


def _pretrained_codec(name: str, folder: Path) -> list[str]:
    (folder / name).mkdir(exist_ok=True)
    return _download(pretrained_files("codec", name), folder)


def _random_demucs(name: str, folder: Path, seed: int) -> list[str]:
    from demucs.htdemucs import HTDemucs
    from safetensors.torch import save_file

    if name not in DEMUCS_ARCH:
        raise WeightsError(f"random weights exist for Demucs {sorted(DEMUCS_ARCH)}, not {name!r}")
    sig, kwargs = DEMUCS_ARCH[name]
    torch.manual_seed(seed)
    model = HTDemucs(**kwargs)
    encoded = {k: ({"_type": "fraction", "numerator": v.numerator, "denominator": v.denominator}
                   if isinstance(v, Fraction) else v) for k, v in kwargs.items()}
    metadata = {"klass": "demucs.htdemucs.HTDemucs", "args": "[]", "kwargs": json.dumps(encoded)}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / f"{sig}.safetensors") as tmp:
        save_file(state, str(tmp), metadata=metadata)
    with atomic_path(folder / f"{name}.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({"models": [sig]}))
    return [f"{name}.yaml", f"{sig}.safetensors"]


def _random_codec(name: str, folder: Path, seed: int) -> list[str]:
    """Codec ``name`` with random weights, saved as the Hub has it (``save_pretrained``)."""
    torch.manual_seed(seed)
    model = codec_model(name).eval()
    # A random LSTM carries the past into every frame: silence got dozens of codes. Zeroed,
    # each LSTM adds nothing to its skip connection, so like a trained codec's the codes
    # describe the sound around their frame and the same sound gives the same codes.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LSTM):
                for p in module.parameters():
                    p.zero_()
    _init_codebooks(model, seed)
    tmp = folder / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(folder / name, ignore_errors=True)
    os.replace(tmp, folder / name)
    return [f"{name}/{f}" for f in HF_FILES]


@torch.no_grad()
def _init_codebooks(model: torch.nn.Module, seed: int) -> None:
    """Give a random codec usable codebooks.

    A random-init EnCodec has all-zero codebooks (training sets them by k-means on its first
    batch), so every code would be 0, and DAC's random ones fit no encoder output. Instead
    each quantizer layer, in order, takes vectors sampled from the current residual of the
    encoder's output on music (2 s pieces of a demo song's mixture and stems at levels from
    -30 to 0 dB), then subtracts its own quantized output from the residual.
    """
    import torchaudio.functional as AF

    g = torch.Generator().manual_seed(seed)
    size, rate = model.config.codebook_size, model.config.sampling_rate
    with tempfile.TemporaryDirectory() as tmp:
        make_song("codebooks", tmp, seconds=12, seed=seed)
        signals = [read_audio(p)[0].mean(0) for p in sorted(Path(tmp).rglob("*.flac"))]
    audio = AF.resample(torch.from_numpy(np.stack(signals)), 44100, rate)
    pieces = audio[:, : audio.shape[1] // (2 * rate) * 2 * rate].reshape(-1, 1, 2 * rate)
    # the fewest pieces whose frames fill a codebook twice over
    frames = 2 * rate // model.config.hop_length
    pieces = pieces[torch.randperm(len(pieces), generator=g)[: -(-2 * size // frames)]]
    gains = 10 ** (-torch.rand(len(pieces), 1, 1, generator=g) * 1.5)  # -30..0 dB
    residual = model.encoder(pieces / pieces.abs().amax((1, 2), keepdim=True).clamp(1e-4) * gains)
    layers = getattr(model.quantizer, "layers", None) or model.quantizer.quantizers
    for layer in layers:
        if hasattr(layer, "in_proj"):  # DAC: codes of a projection, by cosine similarity
            vectors = layer.in_proj(residual)
            layer.codebook.weight.copy_(_sample(vectors, size, g))
            residual = residual - layer(residual)[0]
        else:  # EnCodec: codes of the residual itself
            book = layer.codebook
            book.embed.copy_(_sample(residual, size, g))
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
            residual = residual - layer.decode(layer.encode(residual))


def _sample(x: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` of the frame vectors of ``x`` [B, D, T], drawn without replacement: [n, D]."""
    vectors = x.transpose(1, 2).reshape(-1, x.shape[1])
    return vectors[torch.randperm(len(vectors), generator=g)[:n]]
