from pathlib import Path

from soloist.io import setup_logging
from soloist.synth import make_song

setup_logging(snakemake.log[0])
make_song(snakemake.wildcards.name, Path(snakemake.output.mixture).parent,
          seconds=snakemake.params.seconds, seed=snakemake.params.seed,
          variety=snakemake.params.variety)
