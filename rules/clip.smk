rule clip:
    message:
        "Selecting solo windows of batch {wildcards.batch}"
    input:
        **made_from_input(),
    output:
        record("clip"),  # its tracks; their <track>/windows.parquet, clip.json beside it
    params:
        settings=settings("clip"),
        shaped_by=shaped_by("clip"),
    log:
        "results/logs/clip/{batch}.log",
    benchmark:
        "results/benchmarks/clip/{batch}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/clip.py"
