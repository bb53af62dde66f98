localrules:
    resolve,


# Lists a URL's entries (a playlist becomes tracks <row>.001, <row>.002, ...).
checkpoint resolve:
    message:
        "Resolving {wildcards.row}"
    output:
        "results/resolve/{row}.tsv",
    params:
        url=lambda wc: ROWS[wc.row].source,
        ytdlp=settings("ingest")["ytdlp"],
    log:
        "results/logs/resolve/{row}.log",
    conda:
        "../envs/audio.yaml"
    script:
        "../workflow/scripts/resolve.py"


rule ingest:
    message:
        "Ingesting batch {wildcards.batch}"
    input:
        ingest_input,
    output:
        audio=intermediate(directory("results/ingest/{batch}/audio")),  # <track>.flac
        info=directory("results/ingest/{batch}/info"),  # <track>.json
    params:
        jobs=ingest_jobs,
        settings=settings("ingest"),
    log:
        "results/logs/ingest/{batch}.log",
    benchmark:
        "results/benchmarks/ingest/{batch}.tsv"
    conda:
        "../envs/audio.yaml"
    script:
        "../workflow/scripts/ingest.py"
