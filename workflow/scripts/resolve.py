from soloist.ingest import resolve
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
resolve(snakemake.wildcards.row, snakemake.params.url, snakemake.output[0],
        snakemake.config["ingest"]["ytdlp"])
