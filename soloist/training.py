"""What every trainer shares (the transformer's ``train`` and the codec's ``train_codec``):
the learning-rate schedule, the requeue contract on SIGTERM, RNG states for exact resumes,
the device of a rank, and the MLflow run that continues across restarts."""

from __future__ import annotations

import math
import random
import signal
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from soloist.io import atomic_path

EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpoint saved on a signal; run again to resume


def lr_at(step: int, cfg: dict) -> float:
    """Linear warmup, then cosine decay from lr to min_lr at the last step."""
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    progress = (step - cfg["warmup_steps"]) / max(1, cfg["steps"] - cfg["warmup_steps"])
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (
        cfg["lr"] - cfg["min_lr"])


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def gathered_rng_states(world: int) -> list[dict]:
    """Every rank's RNG states, for rank 0's checkpoint (a collective: all ranks call it)."""
    if world == 1:
        return [rng_state()]
    states = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


def pick_device(setting: str, local_rank: int) -> torch.device:
    """auto: this rank's GPU if there is one, else the CPU; cuda: this rank's GPU."""
    if setting == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(setting)
    if device.type == "cuda" and device.index is None:  # set_device needs an index
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


class Signals:
    """Remembers SIGTERM/SIGUSR1 so the loop can checkpoint at the end of the step."""

    SIGNALS = {signal.SIGTERM, signal.SIGUSR1}

    def __init__(self):
        self.received: int | None = None
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def agreed(self, world: int) -> bool:
        """Whether any rank received a signal (a collective: every rank must stop alike)."""
        received = torch.tensor(float(self.received is not None))
        if world > 1:
            dist.all_reduce(received)
        return bool(received.item())

    @contextmanager
    def held(self):
        """Processes forked in here (data loader workers) never see these signals. SLURM
        signals every process of a job step, and PyTorch lets a worker die of a SIGTERM not
        sent by its parent, which would crash the trainer before it checkpoints. Here they
        wait until the block ends, then reach the trainer's handler."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def mlflow_run(out_dir: Path, mlflow_cfg: dict, config: dict):
    """Start (or, on resume, continue) this training's MLflow run; its id is kept in out_dir."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_cfg["tracking_uri"])
    experiment = mlflow.get_experiment_by_name(mlflow_cfg["experiment"])
    if experiment is None:
        artifacts = None
        if mlflow_cfg["tracking_uri"].startswith("sqlite:"):  # keep artifacts beside the db
            db = Path(mlflow_cfg["tracking_uri"].removeprefix("sqlite:///"))
            artifacts = (db.parent / "mlruns").resolve().as_uri()
        mlflow.create_experiment(mlflow_cfg["experiment"], artifact_location=artifacts)
    mlflow.set_experiment(mlflow_cfg["experiment"])
    id_file = out_dir / "mlflow_run_id"
    if id_file.is_file():
        return mlflow.start_run(run_id=id_file.read_text().strip())
    run = mlflow.start_run()
    mlflow.log_params(flatten(config))
    mlflow.log_dict(config, "config.yaml")  # the whole resolved config, as one file
    with atomic_path(id_file) as tmp:
        tmp.write_text(run.info.run_id + "\n")
    return run


def log_metrics(metrics: dict, step: int) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                        if isinstance(v, (int, float)) and math.isfinite(v)}, step=step)


def check_replicas(model: torch.nn.Module, world: int, what: str) -> None:
    """DDP keeps replicas identical; verify it once at the end (cheap, catches real bugs):
    the parameters and buffers of every rank, summed each."""
    import logging

    tensors = [*model.parameters(), *model.buffers()]
    local = torch.stack([t.detach().double().sum() for t in tensors]).cpu()
    gathered = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(gathered, local.to(tensors[0].device)
                    if dist.get_backend() == "nccl" else local)
    if not all(torch.equal(gathered[0].cpu(), g.cpu()) for g in gathered):
        raise RuntimeError(f"DDP replicas diverged: {what} differ across ranks")
    if dist.get_rank() == 0:
        logging.getLogger("soloist.training").info("%s identical across %d ranks", what, world)


def loss_plot(history: list[dict], path: Path, ylabel: str, title: str) -> None:
    """The training loss of ``history`` ({step, loss} each) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from soloist.io import write_png

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    write_png(path, fig)


def finish(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()
