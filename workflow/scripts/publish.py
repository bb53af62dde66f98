import logging
import sys
from pathlib import Path

from soloist.io import setup_logging
from soloist.publish import PublishError, publish

setup_logging(snakemake.log[0])
i = snakemake.input
try:
    publish(Path(i.model).parent, i.metrics, i.examples, i.stats, i.ingested, snakemake.output[0],
            snakemake.config["publish"])
except PublishError as e:  # a message for the user, not a stack trace
    logging.getLogger("soloist.publish").error("%s", e)
    sys.exit(1)
