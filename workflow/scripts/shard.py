from soloist.io import setup_logging
from soloist.shard import batch_files, shard

setup_logging(snakemake.log[0])
i, o, config = snakemake.input, snakemake.output, snakemake.config
tracks = batch_files(i.ingested, i.clipped, i.tokenized, i.augmented)
shard(tracks, o.manifest.rsplit("/", 1)[0], o.failures, snakemake.params.splits,
      config["shard"], snakemake.params.variant_splits, snakemake.params.condition)
