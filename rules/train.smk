rule train:
    message:
        "Training the {params.preset} model ({params.gpus} GPU(s) on {params.nodes} node(s))"
    input:
        manifest="results/shards/manifest.parquet",
        stats="results/shards/stats.json",
        shards=expand("results/shards/{split}", split=["train", "valid"]),  # what it reads
    output:
        model="results/train/model.safetensors",  # the model folder: weights and config.json
        info="results/train/config.json",
        summary="results/train/train.json",
        curve=report("results/train/loss.png", caption="../report/loss.rst",
                     category="2. Training"),
    params:
        preset=config["train"]["preset"],
        gpus=config["train"]["gpus"],
        nodes=config["train"]["nodes"],
        # upstream settings reach training through the manifest
        settings=settings("train"),
        # tags change the model only when it has tag columns
        condition=settings("condition") if config["condition"]["columns"] else None,
        # task mix's losses; its shards may be a continuation's of latents
        mix=settings("mix") if config["task"]["name"] == "mix" else None,
    threads: 2
    resources:
        **train_resources(config["train"]),
    log:
        "results/logs/train/train.log",
    benchmark:
        "results/benchmarks/train/train.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/train.py"
