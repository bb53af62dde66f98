"""The train_codec stage: soloist's own codec (``soloist.own_codec``), trained on the ingested
audio of the training tracks, so that a model's tokens need not come from someone else's
weights.

Random segments of the tracks (mono, at the codec's rate) are encoded and decoded; the loss is
the reconstruction's distance (``spectral``: the L1 of the log-magnitude frames and their
spectral convergence; ``seanet``: the multi-resolution STFT distance (auraloss), log-mel L1 and
waveform L1, and after ``adversarial_from`` steps a multi-scale STFT discriminator's hinge
loss with feature matching), plus the bottleneck's own (the RVQ's commitment; the VAE's KL
with a warm-up and free bits). One process, or one per GPU (DDP). It
resumes like ``train`` (``soloist.training``): SIGTERM saves a checkpoint and exits with
EXIT_REQUEUE, and the losses continue as if never stopped: each step's segments are drawn
from a generator seeded by the step.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from soloist import training
from soloist.distances import Distances
from soloist.ingest import ingest_sheet
from soloist.io import atomic_path, write_json, write_torch
from soloist.launch import setup_distributed
from soloist.own_codec import OwnCodec, OwnCodecConfig

log = logging.getLogger("soloist.train_codec")
# loss weights: EnCodec's balance of reconstruction terms; the bottleneck's own weight is in
# the config (codec.commitment, codec.kl_weight)
WEIGHTS = {"stft": 1.0, "mel": 1.0, "l1": 0.1, "log_spectrum": 1.0, "convergence": 1.0,
           "bottleneck": 1.0, "adversarial": 1.0, "features": 2.0}
ARCHITECTURE = ("sample_rate", "architecture", "channels", "ratios", "dimension", "lstm_layers",
                "bottleneck", "codebooks", "codebook_size", "quantizer_dropout")


def codec_config(cfg: dict) -> OwnCodecConfig:
    """The architecture the ``codec`` config section asks for."""
    arch = {k: cfg[k] for k in ARCHITECTURE}
    return OwnCodecConfig(sampling_rate=arch.pop("sample_rate"), **arch)


class Discriminator(torch.nn.Module):
    """Multi-scale STFT discriminator: a small 2D convolution stack over the real and
    imaginary STFT of audio [B, 1, N] at three resolutions; each gives a logit map and its
    layers' features."""

    def __init__(self, rate: int, channels: int = 32):
        super().__init__()
        scale = rate / 24_000
        self.sizes = [int(2 ** round(math.log2(n * scale))) for n in (2048, 1024, 512)]
        self.nets = torch.nn.ModuleList(self._net(channels) for _ in self.sizes)

    @staticmethod
    def _net(c: int) -> torch.nn.ModuleList:
        conv = torch.nn.utils.parametrizations.weight_norm
        return torch.nn.ModuleList([
            conv(torch.nn.Conv2d(2, c, (3, 9), padding=(1, 4))),
            conv(torch.nn.Conv2d(c, c, (3, 9), (1, 2), padding=(1, 4))),
            conv(torch.nn.Conv2d(c, c, (3, 9), (1, 2), padding=(1, 4))),
            conv(torch.nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
            conv(torch.nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))])

    def forward(self, audio: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        out = []
        for size, net in zip(self.sizes, self.nets, strict=True):
            spec = torch.stft(audio[:, 0].float(), size, size // 4,
                              window=torch.hann_window(size, device=audio.device),
                              return_complex=True)
            h, features = torch.stack([spec.real, spec.imag], 1).transpose(2, 3), []
            for i, layer in enumerate(net):
                h = layer(h)
                if i < len(net) - 1:
                    h = F.leaky_relu(h, 0.2)
                    features.append(h)
            out.append((h, features))
        return out


class Segments(torch.utils.data.Dataset):
    """Step i's batch: ``batch_size`` random mono segments [B, 1, L] at the codec's rate, drawn
    from a generator seeded by (seed, i, rank), so that a resumed run draws the same ones."""

    def __init__(self, files: list[Path], rate: int, seconds: float, batch_size: int,
                 seed: int, rank: int):
        import soundfile as sf

        self.files, self.rate, self.batch_size = files, rate, batch_size
        self.seed, self.rank = seed, rank
        self.length = round(seconds * rate)
        self.info = [sf.info(str(f)) for f in files]
        weights = np.array([i.frames for i in self.info], np.float64)  # long tracks, more
        self.p = weights / weights.sum()

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, step: int) -> torch.Tensor:
        import soundfile as sf
        import torchaudio.functional as AF

        rng = np.random.default_rng([self.seed, step, self.rank])
        batch = []
        for f in rng.choice(len(self.files), self.batch_size, p=self.p):
            info = self.info[f]
            want = math.ceil(self.length * info.samplerate / self.rate) + 64
            start = int(rng.integers(0, max(1, info.frames - want)))
            audio, rate = sf.read(str(self.files[f]), start=start, frames=want, dtype="float32",
                                  always_2d=True)
            mono = AF.resample(torch.from_numpy(audio.mean(1)), rate, self.rate)
            batch.append(F.pad(mono, (0, max(0, self.length - len(mono))))[:self.length])
        x = torch.stack(batch)[:, None]
        return x / x.abs().amax(-1, keepdim=True).clamp(min=1e-3) * 0.9 * \
            torch.from_numpy(rng.uniform(0.3, 1.0, (len(x), 1, 1))).float()


def sheet_audio(rows: list[tuple[str, str, str]], work: str | os.PathLike, settings: dict
                ) -> list[Path]:
    """The audio of ``codec.tracks``' rows (track, kind, source), ingested into ``work`` as
    ingest would; a track that fails is logged and left out."""
    infos = ingest_sheet(rows, work, settings)
    for info in infos:
        if not info["ok"]:
            log.warning("codec.tracks: %s left out: %s", info["track"], info["reason"])
    log.info("codec.tracks: training on %d of %d tracks",
             sum(i["ok"] for i in infos), len(infos))
    return [Path(i["audio"]) for i in infos if i["ok"]]


def train_codec(audio: list[str | os.PathLike], out_dir: str | os.PathLike,
                config: dict) -> dict:
    """Train the codec of ``config["codec"]`` on the ``audio`` files; writes the model
    folder ``out_dir/own/`` (``config.json``, ``model.safetensors``, ``README.md``), its
    manifest ``out_dir/own.json`` (what ``load_codec`` reads) and ``out_dir/train.json``."""
    signals = training.Signals()  # first: a signal during start-up still ends in a checkpoint
    trainer = _CodecTrainer([Path(a) for a in audio], Path(out_dir), config, signals)
    trainer.resume()
    trainer.start()
    trainer.loop()
    return trainer.finish()


class _CodecTrainer:
    """One codec training's state, in the phases ``train_codec`` calls in order."""

    def __init__(self, audio: list[Path], out_dir: Path, config: dict,
                 signals: training.Signals):
        """Build: device and seeds, the codec, its losses, discriminator and optimizers."""
        cfg = config["codec"]
        self.cfg, self.config, self.audio, self.out_dir = cfg, config, audio, out_dir
        self.signals = signals
        self.rank, self.world, self.local_rank = setup_distributed()
        self.main = self.rank == 0
        self.device = training.pick_device(cfg["device"], self.local_rank)
        torch.manual_seed(cfg["seed"] + self.rank)
        random.seed(cfg["seed"] + self.rank)
        self.raw = OwnCodec(codec_config(cfg)).to(self.device)
        self.losses = Distances(cfg["sample_rate"]).to(self.device)
        adversarial = cfg["adversarial_from"] is not None
        if adversarial and self.raw.spectral and self.main:
            log.warning("codec.adversarial_from is for codec.architecture: seanet; the spectral "
                        "codec trains on magnitudes, without a discriminator")
        self.disc = Discriminator(cfg["sample_rate"]).to(self.device) \
            if adversarial and not self.raw.spectral else None
        self.optimizer = torch.optim.AdamW(self.raw.parameters(), cfg["lr"], betas=(0.8, 0.99))
        self.disc_optimizer = torch.optim.AdamW(self.disc.parameters(), cfg["lr"],
                                                betas=(0.8, 0.99)) if self.disc else None
        self.model, self.ckpt_dir = self.raw, out_dir / "checkpoints"
        self.state = {"step": 0, "history": []}

    def resume(self) -> None:
        """Resume from the last checkpoint, unless it was made with other settings."""
        last = self.ckpt_dir / "last.pt"
        if not last.is_file():
            return
        saved = torch.load(last, map_location="cpu", weights_only=True)
        if saved["codec"] != self.cfg_key():
            if self.main:
                log.warning("the codec settings changed since %s was written: starting over",
                            last)
                shutil.rmtree(self.ckpt_dir)
                (self.out_dir / "mlflow_run_id").unlink(missing_ok=True)
            return
        self.raw.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.disc:
            self.disc.load_state_dict(saved["disc"])
            self.disc_optimizer.load_state_dict(saved["disc_optimizer"])
        rngs = saved["rng"]
        training.set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self.state = saved["state"]
        if self.main:
            log.info("resuming from step %d", self.state["step"])

    def cfg_key(self) -> dict:
        """The settings a checkpoint must share with this run to be resumed."""
        return {k: v for k, v in self.cfg.items()
                if k not in ("steps", "log_every", "checkpoint_every", "workers", "device",
                             "gpus")} | {"audio": sorted(map(str, self.audio))}

    def start(self) -> None:
        """Wrap for DDP, start (or continue) the MLflow run, and the data."""
        if not self.audio:
            raise RuntimeError("no training audio: no track of the sheet's train split (or "
                               "of codec.tracks, where it is set) could be ingested")
        if self.world > 1:
            ids = [self.local_rank] if self.device.type == "cuda" else None
            self.model = DDP(self.raw, device_ids=ids)
            if self.disc:
                self.disc = DDP(self.disc, device_ids=ids)
        self.run = training.mlflow_run(self.out_dir, self.config["mlflow"], self.config) \
            if self.main else None
        cfg = self.cfg
        data = Segments(self.audio, cfg["sample_rate"], cfg["segment_seconds"],
                        cfg["batch_size"], cfg["seed"], self.rank)
        with self.signals.held():  # workers forked here never see SIGTERM
            self.batches = iter(torch.utils.data.DataLoader(
                data, batch_size=None, num_workers=cfg["workers"],
                sampler=range(self.state["step"], cfg["steps"]),
                persistent_workers=False, prefetch_factor=4 if cfg["workers"] else None))
        self.fixed = data[10**9]  # the same segments every log: their losses compare

    def loop(self) -> None:
        """Steps until the last, or a signal (checkpoint, then exit)."""
        cfg, state = self.cfg, self.state
        bar = tqdm(total=cfg["steps"], initial=state["step"], disable=not self.main,
                   unit="step", dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 30)
        self.model.train()
        try:
            while state["step"] < cfg["steps"]:
                metrics = self._step(next(self.batches))
                if not math.isfinite(metrics["train/loss"]):
                    raise FloatingPointError(
                        f"train_codec: the loss is {metrics['train/loss']} at step "
                        f"{state['step']}; the last checkpoint is kept. Lower codec.lr")
                state["history"].append({"step": state["step"], "loss": metrics["train/loss"]})
                if self.main:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['train/loss']:.3f}")
                    training.log_metrics(metrics, state["step"])
                    if state["step"] % cfg["log_every"] == 0 or state["step"] == cfg["steps"]:
                        self._log_audio()
                received = self.signals.agreed(self.world)
                if state["step"] % cfg["checkpoint_every"] == 0 or received or \
                        state["step"] == cfg["steps"]:
                    self._checkpoint()
                if received:
                    log.warning("signal received: checkpoint at step %d saved; exiting with %d so "
                                "the job is requeued and resumes", state["step"],
                                training.EXIT_REQUEUE)
                    training.finish(self.world)
                    sys.exit(training.EXIT_REQUEUE)
        finally:
            # its workers block SIGTERM (Signals.held): left to the exit, multiprocessing would
            # terminate them in vain and wait for them forever (an H200 run hung so)
            getattr(self.batches, "_shutdown_workers", lambda: None)()
        bar.close()

    def _step(self, x: torch.Tensor) -> dict:
        """One optimizer step of the codec (and of the discriminator when it is on)."""
        cfg, step, t0 = self.cfg, self.state["step"], time.perf_counter()
        lr = training.lr_at(step, cfg)
        for opt in filter(None, (self.optimizer, self.disc_optimizer)):
            for group in opt.param_groups:
                group["lr"] = lr
        x = x.to(self.device, non_blocking=True)
        # fp32 on GPUs too: under bf16 autocast the default codec diverged to NaN within 450
        # steps on an H100 and ran no faster (BENCHMARKS.md)
        y, _, bottleneck = self.model(x, self._codebooks(step))
        terms = self.raw.spectral_distance(y, x) if self.raw.spectral else self.losses(y, x)
        terms["bottleneck"] = self._bottleneck(bottleneck, step)
        adversarial = self.disc is not None and step >= cfg["adversarial_from"]
        if adversarial:
            terms |= self._generator_terms(x, y)
        loss = sum(WEIGHTS[k] * v for k, v in terms.items())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.raw.parameters(), 10.0)
        self.optimizer.step()
        if adversarial:
            terms["discriminator"] = self._discriminator_step(x, y.detach())
        self.state["step"] = step + 1
        seconds = self.world * x.shape[0] * x.shape[-1] / cfg["sample_rate"]
        metrics = {f"train/{k}": float(v.detach()) if torch.is_tensor(v) else v
                   for k, v in terms.items()}
        return metrics | {"train/loss": float(loss.detach()), "lr": lr,
                          "audio_seconds_per_s": seconds / (time.perf_counter() - t0)}

    def _codebooks(self, step: int) -> int | None:
        """Quantizer dropout: some batches use only their first k codebooks, k drawn
        uniformly (the same on every rank: seeded by the step)."""
        cfg = self.cfg
        if cfg["bottleneck"] != "rvq":
            return None
        rng = random.Random(cfg["seed"] * 1_000_003 + step)
        if rng.random() < cfg["quantizer_dropout"]:
            return rng.randint(1, cfg["codebooks"])
        return cfg["codebooks"]

    def _bottleneck(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """rvq: ``commitment`` times the commitment loss; vae: beta times the KL per dimension
        and frame, each dimension's at least ``free_bits`` (below it, not pushed further),
        beta ramping up to ``kl_weight`` over ``kl_warmup_steps``."""
        cfg = self.cfg
        if cfg["bottleneck"] == "rvq":
            return cfg["commitment"] * loss
        beta = cfg["kl_weight"] * min(1.0, step / max(1, cfg["kl_warmup_steps"]))
        return beta * loss.clamp(min=cfg["free_bits"]).sum()

    def _generator_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hinge loss of the discriminator on the reconstruction, and feature matching."""
        fake, real = self.disc(y), self.disc(x)
        adversarial = sum(F.relu(1 - logits).mean() for logits, _ in fake) / len(fake)
        features = sum(F.l1_loss(f, r.detach()) / (r.detach().abs().mean() + 1e-5)
                       for (_, fs), (_, rs) in zip(fake, real, strict=True)
                       for f, r in zip(fs, rs, strict=True))
        return {"adversarial": adversarial, "features": features / len(fake)}

    def _discriminator_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        loss = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean()
                   for (r, _), (f, _) in zip(self.disc(x), self.disc(y), strict=True))
        self.disc_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def _log_audio(self) -> None:
        """The fixed segments' losses, reconstructions (WAV) and spectrograms, into MLflow."""
        import mlflow

        from soloist.io import write_audio, write_spectrograms

        self.raw.eval()
        x = self.fixed[:2].to(self.device)
        y = self.raw.decode(self.raw.encode(x))[:, None, :x.shape[-1]]
        self.raw.train()
        terms = self.losses(y, x)
        step, rate = self.state["step"], self.cfg["sample_rate"]
        training.log_metrics({f"fixed/{k}": float(v) for k, v in terms.items()}, step)
        folder = self.out_dir / "samples"
        wave, recon = x[0, 0].float().cpu().numpy(), y[0, 0].float().cpu().numpy()
        write_audio(folder / f"step{step:06d}.wav", np.stack([wave, recon]), rate, "WAV")
        write_spectrograms(folder / f"step{step:06d}.png", {"input": wave,
                                                              "reconstruction": recon}, rate)
        for name in (f"step{step:06d}.wav", f"step{step:06d}.png"):
            mlflow.log_artifact(str(folder / name), "samples")

    def _checkpoint(self) -> None:
        rngs = training.gathered_rng_states(self.world)
        if self.main:
            write_torch(self.ckpt_dir / "last.pt", {
                "model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(),
                "disc": self._disc().state_dict() if self.disc else None,
                "disc_optimizer": self.disc_optimizer.state_dict() if self.disc else None,
                "state": self.state, "rng": rngs, "codec": self.cfg_key()})

    def _disc(self) -> torch.nn.Module:
        return self.disc.module if isinstance(self.disc, DDP) else self.disc

    def finish(self) -> dict:
        """Export the model folder and its manifest, plot the losses, end the MLflow run."""
        result = {"steps": self.state["step"], "world_size": self.world,
                  "audio": sorted(map(str, self.audio)),
                  "final_loss": self.state["history"][-1]["loss"]
                  if self.state["history"] else None}
        if self.world > 1:
            training.check_replicas(self.raw, self.world, "parameters and codebooks")
        if self.main:
            import mlflow

            export(self.raw, self.out_dir, self.cfg, self.state["step"])
            training.loss_plot(self.state["history"], self.out_dir / "loss.png",
                               "training loss", "Codec training loss")
            mlflow.log_artifact(str(self.out_dir / "loss.png"))
            mlflow.end_run()
            write_json(self.out_dir / "train.json",
                       result | {"mlflow_run_id": self.run.info.run_id})
        training.finish(self.world)
        return result


def export(model: OwnCodec, out_dir: Path, cfg: dict, step: int) -> None:
    """``out_dir/own/`` (the model folder, its card) and the manifest ``out_dir/own.json``
    that ``soloist.weights.load_codec`` verifies and reads, like a fetched codec's."""
    from soloist.io import sha256_file

    folder = out_dir / "own"
    model.save_pretrained(folder, {"licence": "yours", "trained_steps": step})
    with atomic_path(folder / "README.md") as tmp:
        tmp.write_text(model_card(model.cfg, cfg, step))
    files = {f"own/{f}": sha256_file(folder / f) for f in ("config.json", "model.safetensors")}
    write_json(out_dir / "own.json", {"family": "codec", "name": "own", "mode": "trained",
                                      "random": False, "files": files})


def model_card(arch: OwnCodecConfig, cfg: dict, step: int) -> str:
    rate = arch.sampling_rate / arch.hop_length
    tokens = (f"{arch.codebooks} codebooks of {arch.codebook_size} codes at {rate:g} Hz "
              f"({arch.codebooks * rate * math.log2(arch.codebook_size) / 1000:g} kbps; its "
              f"first k codebooks work alone)" if arch.bottleneck == "rvq" else
              f"continuous latents of {arch.dimension} dimensions at {rate:g} Hz")
    return f"""---
license: other
library_name: soloist
tags: [audio, codec, soloist]
---

# A soloist codec

A {arch.architecture} convolutional codec ({arch.bottleneck} bottleneck) trained by soloist's
`train_codec` for {step} steps on your recordings: mono {arch.sampling_rate} Hz audio to
{tokens}. Its weights are yours: they come from no pretrained model, so no other licence
applies to them; the recordings it learned from keep their own licences.

Use it with `tokenize.model: own`. Files: `config.json` (the architecture), `model.safetensors`
(the weights; no pickle on load).
"""


def main() -> None:
    """``python -m soloist.train_codec OUT CONFIG_JSON AUDIO...``: what torchrun launches
    (CONFIG_JSON: the resolved workflow config)."""
    from soloist.io import read_json, setup_logging

    out, config, *audio = sys.argv[1:]
    setup_logging()
    train_codec(audio, out, read_json(config))


if __name__ == "__main__":
    main()
