import sys
from pathlib import Path

import torch

from soloist.io import setup_logging
from soloist.launch import run

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
resources = {k: getattr(snakemake.resources, k) for k in snakemake.resources.keys()}
sys.exit(run(Path(snakemake.input.manifest).parent, Path(snakemake.output.model).parent,
             snakemake.config, resources, snakemake.log[0]))
