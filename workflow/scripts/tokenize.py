import torch

from soloist.io import setup_logging
from soloist.tokenize import tokenize_batch
from soloist.tracks import upstream_records

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
tokenize_batch(upstream_records(snakemake.input), snakemake.output[0],
               snakemake.input.weights, snakemake.config["tokenize"], snakemake.params.settings)
