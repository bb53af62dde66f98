import os

# the compiled encoder's kernels (tokenize.compile) are cached with the project, as
# separate's are: later jobs, on any node, skip most of the compile
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.abspath("resources/torch-compile-cache"))

import torch  # noqa: E402

from soloist.io import setup_logging  # noqa: E402
from soloist.tokenize import tokenize_batch  # noqa: E402
from soloist.tracks import upstream_records  # noqa: E402

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
settings = snakemake.params.settings  # tokenize_settings: with latents, if they are asked for
tokenize_batch(upstream_records(snakemake.input), snakemake.output[0], snakemake.input.weights,
               snakemake.config["tokenize"] | {"latents": settings.get("latents", False)},
               settings)
