import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import torch

from soloist.io import setup_logging, write_json
from soloist.train import train


def first_node() -> str:
    """The first host of this SLURM job (the rendezvous host); Snakemake's srun wrapper leaves
    SLURM_JOB_NODELIST out of an mpi rule's environment, so ask the controller."""
    job = os.environ["SLURM_JOB_ID"]
    nodelist = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True,
                              text=True, check=True).stdout.strip()
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                          text=True, check=True).stdout.split()[0]


def launch(cmd: list[str]) -> int:
    """Run the launcher, its output into the rule's log. SLURM signals every process of the
    job step, the launcher and its trainers included: this process only outlives the signal
    and reports how the launcher ended."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: None)
    with open(snakemake.log[0], "a") as log:
        print("launching:", shlex.join(cmd), file=log, flush=True)
        return subprocess.run(cmd, stdout=log, stderr=log).returncode


setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
shards, out = Path(snakemake.input.manifest).parent, Path(snakemake.output.model).parent
config, gpus = snakemake.config, snakemake.params.gpus
trainer = ["-m", "soloist.train", str(shards), str(out), str(out / "run-config.json")]
resources = snakemake.resources
if "mpi" in resources.keys():  # one srun task per node, each a torchrun over its GPUs
    write_json(out / "run-config.json", config)
    job = int(os.environ["SLURM_JOB_ID"])
    sys.exit(launch([
        *shlex.split(resources.mpi), f"--nodes={resources.nodes}", f"--ntasks={resources.tasks}",
        f"--cpus-per-task={resources.cpus_per_task}",
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={resources.tasks}",
        f"--nproc-per-node={max(gpus, 1)}", "--rdzv-backend=c10d",
        f"--rdzv-endpoint={first_node()}:{29500 + job % 1000}", f"--rdzv-id={job}", *trainer]))
if gpus > 1 and torch.cuda.device_count() > 1:  # one process per GPU
    write_json(out / "run-config.json", config)
    sys.exit(launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={gpus}", *trainer]))
train(shards, out, config)
