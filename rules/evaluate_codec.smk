rule evaluate_codec:
    message:
        "Scoring the codec on the held-out tracks against Opus and against itself untrained"
    input:
        manifest="results/train_codec/own.json",
        model="results/train_codec/own/model.safetensors",
        summary="results/train_codec/train.json",  # its MLflow run
        ingested=per_batch(record("ingest", "{batch}")),
        solos=[f for solo in demo_solos("test").values() for f in solo.values()],
    output:
        metrics="results/evaluate_codec/metrics.json",
        page="results/evaluate_codec/index.html",
        plot=report("results/evaluate_codec/distances.png", caption="../report/codec.rst",
                    category="4. Codec"),
        examples=directory("results/evaluate_codec/examples"),
    params:
        splits={r.track: r.split for r in ROWS.values() if r.split},  # the sheet's, or the hash's
        fractions=config["shard"]["fractions"],
        settings=settings("evaluate_codec"),
        solos=demo_solos("test"),  # held-out saxophones: is their pitch kept?
    threads: 2
    log:
        "results/logs/evaluate_codec/evaluate_codec.log",
    benchmark:
        "results/benchmarks/evaluate_codec/evaluate_codec.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/evaluate_codec.py"
