import os

# compiled Demucs kernels (separate.compile) are cached with the project: later jobs, on
# any node, compile faster (in half the time on an H200)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.abspath("resources/torch-compile-cache"))

import torch  # noqa: E402

from soloist.io import setup_logging  # noqa: E402
from soloist.separate import separate_batch  # noqa: E402

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i = snakemake.input
separate_batch(i.ingested, snakemake.output.record, snakemake.config["separate"],
               snakemake.params.settings, i.get("weights"), snakemake.params.sample_rate)
