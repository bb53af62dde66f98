rule clip:
    message:
        "Selecting solo windows of {wildcards.track}"
    input:
        context="results/separate/{track}/context.flac",
        target="results/separate/{track}/target.flac",
        status="results/separate/{track}/separate.json",
    output:
        windows="results/clip/{track}/windows.parquet",
        status="results/clip/{track}/clip.json",
    params:
        settings=config["clip"],
    log:
        "results/logs/clip/{track}.log",
    benchmark:
        "results/benchmarks/clip/{track}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/clip.py"
