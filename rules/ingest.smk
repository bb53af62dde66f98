localrules:
    sheet,
    resolve,


# The sheet as this run read it. Its params are the rows, so that a row added or removed
# reruns shard, which pulls what the new rows need: a new URL row's resolve job has no
# output yet, and a missing output alone makes Snakemake rerun nothing.
rule sheet:
    output:
        "results/sheet/tracks.tsv",
    params:
        rows=[[r.track, r.source, r.kind, r.split] for r in ROWS.values()],
    log:
        "results/logs/sheet/sheet.log",
    run:
        write_sheet(params.rows, output[0])


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
        # its tracks; their audio/<track>.flac and info/<track>.json in results/ingest/{batch}/
        record=record("ingest"),
        **intermediate("audio", audio_folder("ingest")),
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
