"""How training is launched: one process, one torchrun per node, or srun over several nodes.

The train and train_codec rules ask ``resources`` for their SLURM resources and hand their
job to ``run``, which starts the trainer (``python -m soloist.train`` or
``soloist.train_codec``) the way those resources call for; each trainer process then joins
the others in ``setup_distributed``. The rendezvous port is ``rendezvous_port`` for every
path.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from soloist.io import write_json


def resources(train: dict) -> dict:
    """A training rule's resources (its config section: ``gpus``, ``workers``, ``nodes`` if
    any). One node: ``gpus`` GPUs for one torchrun. More nodes: one srun task per node, each
    starting a torchrun on its node's ``gpus`` GPUs."""
    cpus = max(2, train["gpus"] * (train["workers"] + 1))  # a process and its loaders per GPU
    if train.get("nodes", 1) == 1:
        return {"gpu": train["gpus"], "cpus_per_task": cpus}
    # gres (per node), not gpu: with tasks, gpu would become --ntasks-per-gpu
    return {"nodes": train["nodes"], "tasks": train["nodes"], "tasks_per_gpu": 0,
            "gres": f"gpu:{train['gpus']}", "cpus_per_task": cpus, "mpi": "srun"}


def rendezvous_port(job_id: int | str) -> int:
    """The port rank 0 listens on: one per SLURM job, so two jobs on a node never collide."""
    return 29500 + int(job_id) % 1000


def command(trainer: list[str], gpus: int, resources: dict) -> list[str] | None:
    """The launcher command of ``python -m *trainer`` for these resources, or None to train
    in this process."""
    trainer = ["-m", *trainer]
    if "mpi" in resources:  # one srun task per node, each a torchrun over its GPUs
        job = os.environ["SLURM_JOB_ID"]
        return [*shlex.split(resources["mpi"]), f"--nodes={resources['nodes']}",
                f"--ntasks={resources['tasks']}", f"--cpus-per-task={resources['cpus_per_task']}",
                sys.executable, "-m", "torch.distributed.run", f"--nnodes={resources['tasks']}",
                f"--nproc-per-node={max(gpus, 1)}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={_first_node(job)}:{rendezvous_port(job)}",
                f"--rdzv-id={job}", *trainer]
    if gpus > 1 and torch.cuda.device_count() > 1:  # one process per GPU
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={gpus}", *trainer]
    return None


def run(trainer: list[str], here: Callable[[], object], out: Path, config: dict, gpus: int,
        resources: dict, log_file: str) -> int:
    """Train into ``out`` as ``resources`` say: ``python -m *trainer`` in a process per GPU
    (``trainer`` names ``out/run-config.json``, where ``config`` is written for them), or
    ``here()`` in this process. The exit code (EXIT_REQUEUE when a signal stopped it at a
    checkpoint)."""
    cmd = command(trainer, gpus, resources)
    if cmd is None:
        here()
        return 0
    write_json(out / "run-config.json", config)
    # SLURM signals every process of the job step, the launcher and its trainers included:
    # this process only outlives the signal and reports how the launcher ended
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: None)
    with open(log_file, "a") as log:
        print("launching:", shlex.join(cmd), file=log, flush=True)
        return subprocess.run(cmd, stdout=log, stderr=log).returncode


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, or from SLURM's under srun."""
    env = os.environ
    if "RANK" not in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodes = _hostnames(env["SLURM_JOB_NODELIST"])
        env.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=env["SLURM_NTASKS"],
                   LOCAL_RANK=env["SLURM_LOCALID"], MASTER_ADDR=nodes[0])
        env.setdefault("MASTER_PORT", str(rendezvous_port(env["SLURM_JOB_ID"])))
    world = int(env.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                init_method="env://")
    return int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0"))


def _first_node(job: str) -> str:
    """The first host of SLURM job ``job`` (the rendezvous host); Snakemake's srun wrapper
    leaves SLURM_JOB_NODELIST out of an mpi rule's environment, so ask the controller."""
    nodelist = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True,
                              text=True, check=True).stdout.strip()
    return _hostnames(nodelist)[0]


def _hostnames(nodelist: str) -> list[str]:
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                          text=True, check=True).stdout.split()
