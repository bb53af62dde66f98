# soloist: music recordings -> (backing, solo) codec tokens -> a model that plays along.
# Run: snakemake --cores all     (offline, on the demo sheet, with random-init weights)
# Dataset only: snakemake --cores all shard
# Play along with config/accompany.tsv: snakemake --cores all accompany

import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# The defaults; --configfile and --config override them key by key.
configfile: Path(workflow.basedir) / "config" / "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo_corpus.smk"
include: "rules/fetch_weights.smk"
include: "rules/ingest.smk"
include: "rules/separate.smk"
include: "rules/augment.smk"
include: "rules/clip.smk"
include: "rules/tokenize.smk"
include: "rules/shard.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/train_codec.smk"
include: "rules/evaluate_codec.smk"
include: "rules/accompany.smk"
include: "rules/publish.smk"


rule all:
    default_target: True
    input:
        rules.shard.output,
        rules.evaluate.output,


onsuccess:
    from soloist.runlog import banner

    print(banner(RANDOM_OUTPUTS, build_report()), file=sys.stderr)


onerror:
    from soloist.runlog import explain_failures

    print(explain_failures(log, tracks_of_batch), file=sys.stderr)
