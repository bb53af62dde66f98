from soloist.clip import clip
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
clip(snakemake.wildcards.track, i.context, i.target, i.status, o.windows, o.status,
     snakemake.params.settings)
