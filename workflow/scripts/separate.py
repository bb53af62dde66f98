from pathlib import Path

import torch

from soloist.io import setup_logging
from soloist.separate import separate_batch

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, p = snakemake.input, snakemake.params
separate_batch(Path(i.info).parent, snakemake.output[0], p.settings, i.get("weights"),
               p.sample_rate)
