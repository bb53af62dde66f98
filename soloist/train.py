"""Training: one loop, read top to bottom. One process, or one per GPU under torchrun/srun.

A run resumes by itself from ``<out>/checkpoints/last.pt``: model, optimizer, EMA, step,
RNG states and the data position come back, so the losses continue as if never stopped.
SIGTERM or SIGUSR1 (a SLURM time limit or preemption) saves a checkpoint and exits with
EXIT_REQUEUE, so the job can be requeued and resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from soloist.condition import Vocabulary, vocabulary
from soloist.data import eval_loader, latent_scale, train_loader
from soloist.io import read_json, sha256_file, write_json, write_torch
from soloist.launch import setup_distributed
from soloist.model import PRESETS, ModelConfig, Soloist, build, peak_bf16_flops, set_scale
from soloist.training import (
    EXIT_REQUEUE,
    Signals,
    check_replicas,
    finish,
    gathered_rng_states,
    log_metrics,
    loss_plot,
    lr_at,
    mlflow_run,
    pick_device,
    set_rng_state,
)

log = logging.getLogger("soloist.train")
# Settings that may change between a run and its continuation without starting over.
CONTINUABLE = ("steps", "eval_every", "eval_batches", "checkpoint_every", "patience", "workers",
               "gpus", "device", "compile")


def run_key(shards: Path, cfg: dict) -> str:
    """What a checkpoint belongs to: the data (its manifest, else the shards themselves) and
    the settings that shape training. A checkpoint with another key is not resumed."""
    h = hashlib.sha256(json.dumps({k: v for k, v in cfg.items() if k not in CONTINUABLE},
                                  sort_keys=True).encode())
    manifest = shards / "manifest.parquet"
    data = [manifest] if manifest.is_file() else sorted(shards.glob("*/*.tar"))
    for path in [shards / "stats.json", *data]:
        h.update(sha256_file(path).encode())
    return h.hexdigest()[:16]


def train(shards: str | os.PathLike, out_dir: str | os.PathLike, config: dict) -> dict:
    """Train on ``shards/train`` (validating on ``shards/valid``); writes the model folder
    ``out_dir/{model.safetensors,config.json}``.

    ``config`` is the whole resolved workflow config (its ``train`` and ``mlflow`` sections
    drive this; all of it is logged as the run's parameters).
    """
    signals = Signals()  # first: a signal during start-up still ends in a checkpoint
    trainer = _Trainer(Path(shards), Path(out_dir), config, signals)
    trainer.resume()
    trainer.start()
    trainer.loop()
    return trainer.finish()


class _Trainer:
    """One training run's state, in the phases ``train`` calls in order."""

    def __init__(self, shards: Path, out_dir: Path, config: dict, signals: Signals):
        """Build: device and seeds, the model for the data's codec and window, optimizer, EMA."""
        cfg = config["train"]
        self.cfg, self.config, self.shards, self.out_dir = cfg, config, shards, out_dir
        self.signals = signals
        self.rank, self.world, self.local_rank = setup_distributed()
        self.main = self.rank == 0
        self.device = pick_device(cfg["device"], self.local_rank)
        self.peak_flops = peak_bf16_flops(self.device)
        torch.manual_seed(cfg["seed"] + self.rank)
        random.seed(cfg["seed"] + self.rank)
        self.stats = stats = read_json(shards / "stats.json")
        if stats.get("weights") == "random" and self.main:
            log.warning("training on tokens of RANDOM-INIT codec weights: not musically "
                        "meaningful")
        self.frames = round(cfg["seconds"] * stats["frame_rate"])
        self.vocab = vocabulary(config["condition"], stats["per_track"])
        latents = stats["codec"].get("latents") or 0  # continuous frames of D channels
        model_cfg = ModelConfig(**{
            **asdict(PRESETS[cfg["preset"]]), "codebooks": 1 if latents else stats["codebooks"],
            "card": 0 if latents else stats["cardinality"], "latents": latents,
            "context_dropout": cfg["context_dropout"],
            "max_frames": self.frames,  # the window it generates in, too
            "tags": self.vocab.sizes() if self.vocab else [],
            "tag_dropout": config["condition"]["dropout"],
            "mix": config["mix"] if config["task"]["name"] == "mix" else {}})
        self.raw = build(model_cfg).to(self.device)
        self.urls = [str(p) for p in sorted((shards / "train").glob("*.tar"))]
        if latents and self.urls:  # no shards: start() says so
            set_scale(self.raw, *latent_scale(self.urls))
        self.model: torch.nn.Module = self.raw  # compiled and DDP-wrapped by start()
        self.optimizer = self.raw.configure_optimizers(cfg["weight_decay"], cfg["lr"],
                                                       (0.9, 0.95))
        self.ema = [p.detach().clone() for p in self.raw.parameters()] if cfg["ema"] else None
        # a model with tags has their buckets and dropout in its shapes and training; a
        # mixer trains on the shards a continuation of latents does
        shaped = {"condition": config["condition"]} if self.vocab else {}
        if model_cfg.mix:
            shaped["mix"] = model_cfg.mix
        self.ckpt_dir, self.key = out_dir / "checkpoints", run_key(shards, cfg | shaped)
        self.state = {"step": 0, "best_val": math.inf, "evals_since_best": 0, "history": []}
        self.valid_urls = [str(p) for p in sorted((shards / "valid").glob("*.tar"))]
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" else nullcontext())
        self.skipped: dict[str, int] = {}  # loader worker -> corrupt items it skipped

    def resume(self) -> None:
        """Resume from the last checkpoint, unless it belongs to other data or settings."""
        last, saved = self.ckpt_dir / "last.pt", None
        if last.is_file():
            # on the CPU: RNG states must stay CPU tensors; weights and optimizer state are
            # copied to the model's device as they are loaded
            saved = torch.load(last, map_location="cpu", weights_only=True)
            if saved["run_key"] != self.key:
                saved = None
                if self.main:
                    self._start_over(last)
        if self.world > 1:
            dist.barrier()  # rank 0 may have moved the old checkpoints away
        if saved is None:
            return
        self.raw.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.ema is not None and saved["ema"] is not None:
            for e, s in zip(self.ema, saved["ema"], strict=True):
                e.copy_(s)
        rngs = saved["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self.state = saved["state"]
        if self.main:
            log.info("resuming from step %d", self.state["step"])

    def _start_over(self, last: Path) -> None:
        ckpt_dir = self.ckpt_dir
        log.warning("the data or training settings changed since %s was written: starting a "
                    "new training (old checkpoints in %s.old)", last, ckpt_dir)
        shutil.rmtree(f"{ckpt_dir}.old", ignore_errors=True)
        ckpt_dir.rename(f"{ckpt_dir}.old")
        (self.out_dir / "mlflow_run_id").unlink(missing_ok=True)  # a new run, too

    def start(self) -> None:
        """Compile and wrap the model for DDP; start (or continue) the MLflow run."""
        if self.cfg["compile"]:
            self.model = torch.compile(self.model)
        if self.world > 1:
            self.model = DDP(self.model, device_ids=[self.local_rank]
                             if self.device.type == "cuda" else None)
        self.run = mlflow_run(self.out_dir, self.config["mlflow"], self.config) \
            if self.main else None
        if not self.urls:
            raise RuntimeError(f"no training shards in {self.shards / 'train'}")
        if not self.valid_urls and self.main:
            log.warning("no validation shards in %s: no validation, early stopping off; "
                        "model.safetensors will be the last checkpoint", self.shards / "valid")

    def loop(self) -> None:
        """Steps until the last, an early stop, or a signal (checkpoint, then exit)."""
        cfg, state = self.cfg, self.state
        data = self._batches(state["step"] * cfg["grad_accum"])
        bar = tqdm(total=cfg["steps"], initial=state["step"], disable=not self.main,
                   unit="step", dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 30)
        self.model.train()
        while state["step"] < cfg["steps"]:
            metrics = self._step(data)
            state["history"].append({"step": state["step"], "loss": metrics["train/loss"]})
            if self.main:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}",
                                tok_s=f"{metrics['tokens_per_s']:.0f}")
                log_metrics(metrics, state["step"])
            if state["step"] % cfg["eval_every"] == 0 or state["step"] == cfg["steps"]:
                self._validate_and_decide()
            if self._checkpoint_or_stop():
                break
        bar.close()

    def _batches(self, start_micro: int) -> Iterator[dict]:
        """Micro-batches from global micro-batch index ``start_micro`` on, across epochs."""
        cfg = self.cfg
        epoch, skip = divmod(start_micro, cfg["epoch_batches"])
        while True:
            loader = train_loader(self.urls, batch_size=cfg["batch_size"], frames=self.frames,
                                  pad=self.raw.cfg.card, seed=cfg["seed"], epoch=epoch,
                                  batches=cfg["epoch_batches"], workers=cfg["workers"],
                                  shuffle_buffer=cfg["shuffle_buffer"], skip=skip)
            with self.signals.held():  # the first batch starts the workers
                first = next(loader, None)
            if first is not None:
                yield first
                yield from loader
            epoch, skip = epoch + 1, 0

    def _step(self, data: Iterator[dict]) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; its metrics."""
        cfg, world, step, t0 = self.cfg, self.world, self.state["step"], time.perf_counter()
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.raw.step = step  # a model's losses may change with it (task mix: the critic's)
        total = parts = torch.zeros((), device=self.device)
        for micro in range(cfg["grad_accum"]):
            batch = next(data)
            self.skipped[batch["worker"]] = batch["skipped"]
            sync = micro == cfg["grad_accum"] - 1 or world == 1
            with self.autocast, (nullcontext() if sync else self.model.no_sync()):
                loss, losses, _ = self.model(*_inputs(batch, self.device, self.vocab))
                (loss / cfg["grad_accum"]).backward()
            total = total + loss.detach().float() / cfg["grad_accum"]
            parts = parts + losses.detach().float() / cfg["grad_accum"]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(),
                                                   cfg["grad_clip"] or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.raw.parameters(), strict=True):
                    e.lerp_(p.detach(), 1 - cfg["ema"])
        losses = torch.cat([total[None], parts])
        if world > 1:
            dist.all_reduce(losses)
            losses /= world
        self.state["step"] = step + 1
        return self._metrics(losses, lr, grad_norm, time.perf_counter() - t0)

    def _metrics(self, losses: torch.Tensor, lr: float, grad_norm: torch.Tensor,
                 dt: float) -> dict:
        """Metrics of a step whose ``losses`` are [the loss, the model's parts of it...]."""
        cfg, frames, world = self.cfg, self.frames, self.world
        tokens = frames * cfg["batch_size"] * cfg["grad_accum"] * world
        loss, *parts = losses.tolist()
        metrics = {"train/loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                   "tokens_per_s": tokens / dt, "step_time": dt}
        metrics |= {f"train/loss_{n}": v for n, v in zip(self.raw.loss_names, parts, strict=True)}
        if self.peak_flops:
            metrics["mfu"] = self.raw.flops_per_token(frames) * tokens / dt / \
                (self.peak_flops * world)
        return metrics

    def _validate_and_decide(self) -> None:
        """Rank 0 validates; every rank learns the result, so all decide alike whether this
        is the best model so far."""
        state = self.state
        val = _validate(self.raw, self.valid_urls, self.cfg, self.frames, self.vocab,
                        self.device, self.autocast) if self.main else None
        val_loss = torch.tensor(val["val/loss"] if val else math.nan, device=self.device)
        if self.world > 1:
            dist.broadcast(val_loss, 0)
        if self.main and val:
            log_metrics(val, state["step"])
            log.info("step %d: validation loss %.4f", state["step"], val["val/loss"])
        if math.isnan(val_loss.item()):
            return
        if val_loss.item() < state["best_val"]:
            state["best_val"], state["evals_since_best"] = val_loss.item(), 0
            self._checkpoint("best.pt")
        else:
            state["evals_since_best"] += 1

    def _checkpoint_or_stop(self) -> bool:
        """Checkpoint when it is time to; exit on a signal; whether to stop early."""
        cfg, state = self.cfg, self.state
        stop = cfg["patience"] and state["evals_since_best"] >= cfg["patience"]
        received = self.signals.agreed(self.world)  # every rank must agree to stop here
        if state["step"] % cfg["checkpoint_every"] == 0 or received or stop or \
                state["step"] == cfg["steps"]:
            self._checkpoint("last.pt")
        if received:
            log.warning("signal received: checkpoint at step %d saved; exiting with %d so the "
                        "job is requeued and resumes", state["step"], EXIT_REQUEUE)
            finish(self.world)
            sys.exit(EXIT_REQUEUE)
        if stop:
            log.info("early stop: no better validation loss in %d evaluations", cfg["patience"])
        return bool(stop)

    def _checkpoint(self, name: str) -> None:
        rngs = gathered_rng_states(self.world)
        if self.main:
            write_torch(self.ckpt_dir / name, {
                "model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema, "state": self.state, "rng": rngs, "run_key": self.key})

    def finish(self) -> dict:
        """Check the replicas, export the model folder, plot, end the MLflow run."""
        state, world = self.state, self.world
        total_skipped = sum(self.skipped.values())
        if world > 1:
            check_replicas(self.raw, world, "parameters")
            counts = torch.tensor(float(total_skipped))
            dist.all_reduce(counts)
            total_skipped = int(counts.item())
        result = {"steps": state["step"], **_validation(state["best_val"]),
                  "skipped_samples": total_skipped, "world_size": world}
        if self.main:
            import mlflow

            out_dir = self.out_dir
            _export(out_dir, self.ckpt_dir, self.raw, self.config, self.stats, self.vocab)
            log_metrics({"skipped_samples": total_skipped}, state["step"])
            log.info("skipped %d corrupt samples or shards", total_skipped)
            loss_plot(state["history"], out_dir / "loss.png",
                      f"train loss ({self.raw.loss_label})", "Training loss")
            mlflow.log_artifact(str(out_dir / "loss.png"))
            mlflow.end_run()
            write_json(out_dir / "train.json", result | {"mlflow_run_id": self.run.info.run_id})
        finish(world)
        return result


def _inputs(batch: dict, device: torch.device, vocab: Vocabulary | None) -> tuple:
    """The model's (context, target, context_mask, target_lengths, tags) of a loader batch.

    A batch without padding gets no mask, so attention can take the flash kernel.
    """
    mask = batch["context_mask"]
    return (batch["context"].to(device, non_blocking=True),
            batch["target"].to(device, non_blocking=True),
            None if mask.all() else mask.to(device), batch["lengths"].to(device),
            None if vocab is None else vocab.tensor(batch["tags"]).to(device))


@torch.no_grad()
def _validate(model: Soloist, urls: list[str], cfg: dict, frames: int,
              vocab: Vocabulary | None, device: torch.device, autocast) -> dict | None:
    """Mean validation loss (overall and per codebook) on up to eval_batches batches."""
    if not urls:
        return None
    model.eval()
    totals, n = None, 0
    for i, batch in enumerate(eval_loader(urls, batch_size=cfg["batch_size"], frames=frames,
                                          pad=model.cfg.card)):
        if i >= cfg["eval_batches"]:
            break
        with autocast:
            loss, losses, _ = model(*_inputs(batch, device, vocab))
        both = torch.cat([loss.float()[None], losses.float()])
        totals = both if totals is None else totals + both
        n += 1
    model.train()
    if totals is None:
        return None
    loss, *parts = (totals / n).tolist()
    return {"val/loss": loss} | {f"val/loss_{name}": v
                                 for name, v in zip(model.loss_names, parts, strict=True)}


def _validation(best_val: float) -> dict:
    """What train.json and the model's config say of validation: whether a loss was
    measured (``best_val`` stays inf without valid shards) and the best one, or null."""
    validated = math.isfinite(best_val)
    return {"validated": validated, "best_val_loss": best_val if validated else None}


def _export(out_dir: Path, ckpt_dir: Path, model: Soloist, config: dict, stats: dict,
            vocab: Vocabulary | None) -> None:
    """The model folder: the best (else last) weights, EMA'd if EMA is on, as
    ``model.safetensors`` beside ``config.json``. Its max_frames is the training window:
    the window it generates in."""
    best = ckpt_dir / "best.pt"
    source = best if best.is_file() else ckpt_dir / "last.pt"
    saved = torch.load(source, map_location="cpu", weights_only=True)
    weights = saved["model"]
    if saved["ema"] is not None:
        names = [n for n, _ in model.named_parameters()]
        weights = weights | {n: e.cpu() for n, e in zip(names, saved["ema"], strict=True)}
    with torch.device("meta"):  # no init: the weights are assigned
        exported = build(model.cfg)
    exported.load_state_dict(weights, assign=True)
    training = {"preset": config["train"]["preset"], "step": saved["state"]["step"],
                "checkpoint": source.name, **_validation(saved["state"]["best_val"])}
    exported.save_pretrained(out_dir, model_info(config, stats, model.cfg.max_frames, training,
                                                 vocab))


def _version() -> str:
    """soloist's version; "source" where it runs from a checkout it was not installed from
    (the workflow puts its folder on PYTHONPATH, so a clone runs without pip install)."""
    try:
        return version("soloist")
    except PackageNotFoundError:
        return "source"


def model_info(config: dict, stats: dict, frames: int, training: dict,
               vocab: Vocabulary | None) -> dict:
    """What a model folder says beside the model config: its task, the codec whose tokens it
    reads, the separator roles that made its backing and solo (none for the other tasks), its
    window, what it learned from, and the ``vocab`` of its tags (if it has any)."""
    splits = {}
    for split, counts in stats["splits"].items():
        seconds = sum(t["duration"] for t in stats["per_track"] if t["split"] == split)
        splits[split] = {"tracks": counts["tracks"], "windows": counts["samples"],
                         "hours": round(seconds / 3600, 4)}
    info = {"soloist_version": _version(), "weights": stats["weights"],
            "task": config["task"]["name"], "codec": stats["codec"],
            "separator": None if config["task"]["name"] != "solo" else
            {k: config["separate"][k] for k in ("model", "context", "target")},
            "window_seconds": frames / stats["frame_rate"], "training": training,
            "data": {"tracks": stats["tracks_ok"], "splits": splits}}
    if vocab is not None:  # what generation needs to turn tags into the model's ids
        info["condition"] = vocab.to_dict()
    if stats["weights"] == "random":
        info["warning"] = stats["warning"]
    return info


def main() -> None:
    """``python -m soloist.train SHARDS OUT CONFIG_JSON``: the entry point torchrun/srun launch."""
    import argparse

    from soloist.io import setup_logging

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("shards")
    ap.add_argument("out")
    ap.add_argument("config", help="the resolved workflow config as JSON")
    args = ap.parse_args()
    setup_logging()
    train(args.shards, args.out, read_json(args.config))


if __name__ == "__main__":
    main()
