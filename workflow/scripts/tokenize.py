import torch

from soloist.io import setup_logging
from soloist.tokenize import tokenize

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, o = snakemake.input, snakemake.output
tokenize(snakemake.wildcards.track, i.context, i.target, i.status, o.context, o.target,
         o.status, i.weights, snakemake.params.settings)
