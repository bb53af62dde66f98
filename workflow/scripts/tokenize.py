import torch

from soloist.io import setup_logging
from soloist.tokenize import tokenize_batch

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
tokenize_batch(snakemake.input.separated, snakemake.input.get("augmented"), snakemake.output[0],
               snakemake.input.weights, snakemake.config["tokenize"], snakemake.params.settings)
