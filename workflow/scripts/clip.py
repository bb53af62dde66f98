from soloist.clip import clip_batch
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
clip_batch(snakemake.input.separated, snakemake.input.get("augmented"), snakemake.output[0],
           snakemake.config["clip"], snakemake.params.settings)
