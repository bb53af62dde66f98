rule train_codec:
    message:
        "Training soloist's own codec ({params.bottleneck}) on the training tracks"
    input:
        # the training tracks' ingested audio, listed in their batches' records
        ingested=per_batch(record("ingest", "{batch}")),
    output:
        manifest="results/train_codec/own.json",  # what tokenize.model: own loads
        model="results/train_codec/own/model.safetensors",
        info="results/train_codec/own/config.json",
        summary="results/train_codec/train.json",
        curve=report("results/train_codec/loss.png", caption="../report/codec_loss.rst",
                     category="4. Codec"),
    params:
        bottleneck=config["codec"]["bottleneck"],
        splits={r.track: r.split for r in ROWS.values() if r.split},  # the sheet's, or the hash's
        fractions=config["shard"]["fractions"],
        settings=settings("codec"),
    threads: 2
    resources:
        **train_resources(config["codec"]),
    log:
        "results/logs/train_codec/train_codec.log",
    benchmark:
        "results/benchmarks/train_codec/train_codec.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/train_codec.py"
