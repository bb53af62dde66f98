from soloist.clip import clip_batch
from soloist.io import setup_logging
from soloist.tracks import upstream_records

setup_logging(snakemake.log[0])
clip_batch(upstream_records(snakemake.input), snakemake.output[0],
           snakemake.config["clip"], snakemake.params.settings, snakemake.config["task"])
