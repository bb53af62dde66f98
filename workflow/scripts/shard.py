from soloist.io import setup_logging
from soloist.shard import batch_files, shard

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
tracks = batch_files(i.ingested, i.clipped, i.tokenized)
shard(tracks, o.manifest.rsplit("/", 1)[0], o.failures, snakemake.params.splits,
      snakemake.config["shard"])
