rule evaluate:
    message:
        "Evaluating the model and generating solos"
    input:
        model="results/train/model.safetensors",
        info="results/train/config.json",
        summary="results/train/train.json",
        manifest="results/shards/manifest.parquet",
        shards="results/shards/test",  # what it scores
        weights=weights_manifest("codec"),
        truths=list(demo_truths().values()),  # a demo song's fit is scored against its truth
    output:
        metrics="results/evaluate/metrics.json",
        page="results/evaluate/index.html",
        listen=report("results/evaluate/listen.html", caption="../report/listen.rst",
                      category="3. Evaluation"),
        examples=directory("results/evaluate/examples"),
    params:
        settings=settings("evaluate"),
        truths=demo_truths(),
    threads: 2
    log:
        "results/logs/evaluate/evaluate.log",
    benchmark:
        "results/benchmarks/evaluate/evaluate.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/evaluate.py"
