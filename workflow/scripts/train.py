import subprocess
import sys
from pathlib import Path

import torch

from soloist.io import setup_logging, write_json
from soloist.train import train

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
shards, out = Path(snakemake.input.manifest).parent, Path(snakemake.output.model).parent
config, gpus = snakemake.params.config, snakemake.resources.gpu
if gpus > 1 and torch.cuda.device_count() > 1:  # one process per GPU
    write_json(out / "config.json", config)
    with open(snakemake.log[0], "a") as log:
        code = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc-per-node={gpus}", "-m", "soloist.train", str(shards),
                               str(out), str(out / "config.json")],
                              stdout=log, stderr=log).returncode
    sys.exit(code)
train(shards, out, config)
