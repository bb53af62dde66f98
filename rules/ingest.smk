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
        ytdlp=config["ingest"]["ytdlp"],
    log:
        "results/logs/resolve/{row}.log",
    conda:
        "../envs/audio.yaml"
    script:
        "../workflow/scripts/resolve.py"


rule ingest:
    message:
        "Ingesting {wildcards.track}"
    input:
        unpack(ingest_input),
    output:
        audio=intermediate("results/ingest/{track}/audio.flac"),
        info="results/ingest/{track}/info.json",
    params:
        row=lambda wc: row_of(wc.track, ROWS).track,
        kind=lambda wc: row_of(wc.track, ROWS).kind,
        source=lambda wc: source_of(row_of(wc.track, ROWS)),
        settings=config["ingest"],
    log:
        "results/logs/ingest/{track}.log",
    benchmark:
        "results/benchmarks/ingest/{track}.tsv"
    conda:
        "../envs/audio.yaml"
    script:
        "../workflow/scripts/ingest.py"
