from pathlib import Path

from soloist.demo_corpus import make_song
from soloist.io import setup_logging

setup_logging(snakemake.log[0])
make_song(snakemake.wildcards.name, Path(snakemake.output.mixture).parent,
          seconds=snakemake.params.seconds, seed=snakemake.params.seed)
