from soloist.fetch_weights import fetch_weights
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
w = snakemake.wildcards
fetch_weights(w.family, w.name, w.mode, snakemake.output[0], seed=snakemake.params.seed)
