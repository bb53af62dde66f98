rule shard:
    message:
        "Writing WebDataset shards, manifest, stats and plots"
    input:
        sheet="results/sheet/tracks.tsv",
        ingested=per_batch(record("ingest", "{batch}")),
        clipped=per_batch(record("clip", "{batch}")),
        tokenized=per_batch(record("tokenize", "{batch}")),
        augmented=per_batch(record("augment", "{batch}")) if VARIANTS else [],
        resolved=[f"results/resolve/{r.track}.tsv" for r in ROWS.values() if r.kind == "url"],
    output:
        shards=directory(expand("results/shards/{split}", split=["train", "valid", "test"])),
        manifest="results/shards/manifest.parquet",
        stats="results/shards/stats.json",
        dataset=report("results/shards/plots/dataset.png", caption="../report/dataset.rst",
                       category="1. Dataset"),
        plots=report(multiext("results/shards/plots/", "clips_per_track.png", "rms.png",
                              "durations.png"), caption="../report/shard_plots.rst",
                     category="1. Dataset"),
        failures="results/failures.tsv",
        failures_page=report("results/shards/failures.html", caption="../report/failures.rst",
                             category="1. Dataset"),
    params:
        splits={r.track: r.split for r in ROWS.values() if r.split},
        settings=settings("shard"),
        variant_splits=config["augment"]["splits"] if VARIANTS else [],
        condition=condition_tags(),
    log:
        "results/logs/shard/shard.log",
    benchmark:
        "results/benchmarks/shard/shard.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/shard.py"
