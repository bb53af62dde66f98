rule tokenize:
    message:
        "Tokenizing {wildcards.track} with EnCodec"
    input:
        context="results/separate/{track}/context.flac",
        target="results/separate/{track}/target.flac",
        status="results/separate/{track}/separate.json",
        weights=weights_manifest("encodec"),
    output:
        context="results/tokenize/{track}/context.npy",
        target="results/tokenize/{track}/target.npy",
        status="results/tokenize/{track}/tokens.json",
    params:
        settings={k: v for k, v in config["tokenize"].items() if k not in ("threads", "gpus")},
    threads: config["tokenize"]["threads"]
    resources:
        gpu=config["tokenize"]["gpus"],
    log:
        "results/logs/tokenize/{track}.log",
    benchmark:
        "results/benchmarks/tokenize/{track}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/tokenize.py"
