from soloist.ingest import ingest
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
ingest(snakemake.wildcards.track, p.row, p.kind, p.source, snakemake.output.audio,
       snakemake.output.info, p.settings, p.settings["downloads"],
       resolved_tsv=snakemake.input.get("resolved"))
