rule tokenize:
    message:
        "Tokenizing batch {wildcards.batch} with EnCodec"
    input:
        separated="results/separate/{batch}",
        weights=weights_manifest("encodec"),
    output:
        directory("results/tokenize/{batch}"),  # <track>/{context,target}.npy and tokens.json
    params:
        settings={k: v for k, v in config["tokenize"].items() if k not in ("threads", "gpus")},
    threads: config["tokenize"]["threads"]
    resources:
        gpu=config["tokenize"]["gpus"],
    log:
        "results/logs/tokenize/{batch}.log",
    benchmark:
        "results/benchmarks/tokenize/{batch}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/tokenize.py"
