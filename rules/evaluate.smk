rule evaluate:
    message:
        "Evaluating the model and generating solos"
    input:
        model="results/train/model.safetensors",
        info="results/train/config.json",
        summary="results/train/train.json",
        manifest="results/shards/manifest.parquet",
        weights=weights_manifest("encodec"),
    output:
        metrics="results/evaluate/metrics.json",
        page="results/evaluate/index.html",
        examples=directory("results/evaluate/examples"),
    params:
        config={k: config[k] for k in ("evaluate", "tokenize", "mlflow")},
    threads: 2
    log:
        "results/logs/evaluate/evaluate.log",
    benchmark:
        "results/benchmarks/evaluate/evaluate.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/evaluate.py"
