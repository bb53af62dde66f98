from pathlib import Path

import torch

from soloist.evaluate_codec import evaluate_codec
from soloist.io import setup_logging
from soloist.tracks import ingested_audio

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i = snakemake.input
audio = ingested_audio(i.ingested, "test", snakemake.params.splits,
                       snakemake.params.fractions)
evaluate_codec(i.manifest, audio, Path(snakemake.output.metrics).parent, snakemake.config,
               snakemake.params.solos)
