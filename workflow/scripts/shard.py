from pathlib import Path

from soloist.io import setup_logging
from soloist.shard import TrackFiles, shard

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
tracks = [TrackFiles(Path(f[0]).parent.name, *map(Path, f))
          for f in zip(i.info, i.clip, i.windows, i.tokens, i.context, i.target, strict=True)]
shard(tracks, Path(o.manifest).parent, o.failures, snakemake.params.splits,
      snakemake.params.settings)
