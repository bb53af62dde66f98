rule shard:
    message:
        "Writing WebDataset shards, manifest, stats and plots"
    input:
        info=per_batch("results/ingest/{batch}/info"),
        clip=per_batch("results/clip/{batch}"),
        tokens=per_batch("results/tokenize/{batch}"),
        resolved=[f"results/resolve/{r.track}.tsv" for r in ROWS.values() if r.kind == "url"],
    output:
        shards=directory(expand("results/shards/{split}", split=["train", "valid", "test"])),
        manifest="results/shards/manifest.parquet",
        stats="results/shards/stats.json",
        plots=multiext("results/shards/plots/", "clips_per_track.png", "rms.png",
                       "durations.png"),
        failures="results/failures.tsv",
    params:
        splits={r.track: r.split for r in ROWS.values() if r.split},
        settings=config["shard"],
    log:
        "results/logs/shard/shard.log",
    benchmark:
        "results/benchmarks/shard/shard.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/shard.py"
