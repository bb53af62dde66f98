import torch

from soloist.augment import augment_batch
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
augment_batch(snakemake.input.separated, snakemake.output.record, snakemake.params.tracks,
              snakemake.config["augment"])
