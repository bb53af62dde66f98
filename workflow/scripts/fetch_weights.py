import logging
import sys

from soloist.fetch_weights import WeightsError, fetch_weights
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
w = snakemake.wildcards
try:
    fetch_weights(w.family, w.name, w.mode, snakemake.output[0], seed=snakemake.params.seed)
except WeightsError as e:  # a message for the user, not a stack trace
    logging.getLogger("soloist.fetch_weights").error("%s", e)
    sys.exit(1)
