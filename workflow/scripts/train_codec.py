import sys
from pathlib import Path

import torch

from soloist.io import setup_logging
from soloist.launch import run
from soloist.tracks import ingested_audio
from soloist.train_codec import sheet_audio, train_codec

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
out = Path(snakemake.output.manifest).parent
if snakemake.params.rows:
    audio = sheet_audio(snakemake.params.rows, out, snakemake.config["ingest"])
else:
    audio = ingested_audio(snakemake.input.ingested, "train", snakemake.params.splits,
                           snakemake.params.fractions)
audio = [str(a) for a in audio]
resources = {k: getattr(snakemake.resources, k) for k in snakemake.resources.keys()}
sys.exit(run(["soloist.train_codec", str(out), str(out / "run-config.json"), *audio],
             lambda: train_codec(audio, out, snakemake.config), out, snakemake.config,
             snakemake.config["codec"]["gpus"], resources, snakemake.log[0]))
