localrules:
    publish,


# An upload without a token is refused before any job runs, not after a day of training.
onstart:
    if config["publish"]["repo_id"] and {"publish", "results/publish"} & set(
        workflow.dag_settings.targets
    ):
        from soloist.publish import hub_token

        hub_token(config["publish"]["repo_id"])


# Local: on clusters it runs on the login node, which can reach the Hub.
rule publish:
    message:
        "Writing the model folder results/publish"
    input:
        model="results/train/model.safetensors",
        info="results/train/config.json",
        metrics="results/evaluate/metrics.json",
        examples="results/evaluate/examples",
        stats="results/shards/stats.json",
        ingested=per_batch(record("ingest", "{batch}")),
    output:
        directory("results/publish"),  # model.safetensors, config.json, README.md, examples/
    params:
        settings=settings("publish"),
    log:
        "results/logs/publish/publish.log",
    benchmark:
        "results/benchmarks/publish/publish.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/publish.py"
