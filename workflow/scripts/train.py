import sys
from pathlib import Path

import torch

from soloist.io import setup_logging
from soloist.launch import run
from soloist.train import train

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
shards, out = Path(snakemake.input.manifest).parent, Path(snakemake.output.model).parent
resources = {k: getattr(snakemake.resources, k) for k in snakemake.resources.keys()}
sys.exit(run(["soloist.train", str(shards), str(out), str(out / "run-config.json")],
             lambda: train(shards, out, snakemake.config), out, snakemake.config,
             snakemake.config["train"]["gpus"], resources, snakemake.log[0]))
