from pathlib import Path

import torch

from soloist.evaluate import evaluate
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, o = snakemake.input, snakemake.output
evaluate(Path(i.model).parent, Path(i.manifest).parent, i.weights, Path(o.metrics).parent,
         snakemake.config, snakemake.params.truths)
