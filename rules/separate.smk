rule separate:
    message:
        "Separating {wildcards.track} into context and target"
    input:
        unpack(separate_input),
    output:
        context=intermediate("results/separate/{track}/context.flac"),
        target=intermediate("results/separate/{track}/target.flac"),
        status="results/separate/{track}/separate.json",
    params:
        settings={k: v for k, v in config["separate"].items() if k not in ("threads", "gpus")},
        sample_rate=config["ingest"]["sample_rate"],
        stems_dir="results/separate/{track}/stems",
    threads: config["separate"]["threads"]
    resources:
        gpu=config["separate"]["gpus"],
    log:
        "results/logs/separate/{track}.log",
    benchmark:
        "results/benchmarks/separate/{track}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/separate.py"
