from soloist.ingest import ingest_batch
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
ingest_batch(snakemake.params.jobs, snakemake.output.record, snakemake.config["ingest"],
             snakemake.params.settings)
