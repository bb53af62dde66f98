rule tokenize:
    message:
        "Tokenizing batch {wildcards.batch} with EnCodec"
    input:
        separated="results/separate/{batch}",
        weights=weights_manifest("encodec"),
    output:
        directory("results/tokenize/{batch}"),  # <track>/{context,target}.npy and tokens.json
    params:
        settings=settings("tokenize"),
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
