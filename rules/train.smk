rule train:
    message:
        "Training the {params.preset} model ({resources.gpu} GPU(s))"
    input:
        manifest="results/shards/manifest.parquet",
        stats="results/shards/stats.json",
    output:
        model="results/train/model.pt",
        info="results/train/model.json",
        summary="results/train/train.json",
        curve="results/train/loss.png",
    params:
        preset=config["train"]["preset"],
        # logged as the run's parameters; evaluation settings do not retrain
        config={k: v for k, v in config.items() if k != "evaluate"},
    threads: 2
    resources:
        gpu=config["train"]["gpus"],
    log:
        "results/logs/train/train.log",
    benchmark:
        "results/benchmarks/train/train.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/train.py"
