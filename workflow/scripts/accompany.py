from pathlib import Path

import torch

from soloist.accompany import Backing, accompany, load_model, log_to_mlflow
from soloist.generate import Sampling
from soloist.io import read_json, setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, p = snakemake.input, snakemake.params
config = snakemake.config  # the whole config; params hold what the outputs depend on
a = config["accompany"]
model = load_model(Path(i.model).parent, a["device"])
summary = accompany([Backing(**b) for b in p.backings], model, snakemake.output[0], config,
                    {"codec": i.codec, "demucs": i.get("separator")},
                    Sampling(a["temperature"], a["top_k"], a["top_p"], a["cfg_scale"]), a["seed"],
                    a["overlap"], a["seconds"], a["separate"], a["batch_size"], a["compile"],
                    progress=False, name="results/train", tag_cfg=a["tag_cfg"])
log_to_mlflow(snakemake.output[0], summary, read_json(i.summary)["mlflow_run_id"],
              config["mlflow"])
