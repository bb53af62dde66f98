from pathlib import Path

import torch

from soloist.io import read_json, setup_logging
from soloist.separate import Item, separate

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, o, p = snakemake.input, snakemake.output, snakemake.params
weights = i.get("weights")
item = Item(snakemake.wildcards.track, Path(i.audio), Path(i.info), Path(o.context),
            Path(o.target), Path(o.status), Path(p.stems_dir))
separate([item], p.settings, weights, p.sample_rate,
         weights_random=bool(weights) and read_json(weights)["random"])
