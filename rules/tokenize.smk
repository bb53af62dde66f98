rule tokenize:
    message:
        "Tokenizing batch {wildcards.batch} with {config[tokenize][model]}"
    input:
        weights=weights_manifest("codec"),
        **made_from_input(),
    output:
        # its tracks; their <track>/{context,target}.npy and tokens.json beside it
        record("tokenize"),
    params:
        settings=tokenize_settings(),
        shaped_by=shaped_by("tokenize"),
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
