rule clip:
    message:
        "Selecting solo windows of batch {wildcards.batch}"
    input:
        "results/separate/{batch}",
    output:
        directory("results/clip/{batch}"),  # <track>/windows.parquet and clip.json
    params:
        settings=settings("clip"),
    log:
        "results/logs/clip/{batch}.log",
    benchmark:
        "results/benchmarks/clip/{batch}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/clip.py"
