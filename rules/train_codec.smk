rule train_codec:
    message:
        "Training soloist's own codec ({params.bottleneck}) on {params.on}"
    input:
        unpack(train_codec_input),
    output:
        manifest="results/train_codec/own.json",  # what tokenize.model: own loads
        model="results/train_codec/own/model.safetensors",
        info="results/train_codec/own/config.json",
        summary="results/train_codec/train.json",
        curve=report("results/train_codec/loss.png", caption="../report/codec_loss.rst",
                     category="4. Codec"),
    params:
        bottleneck=config["codec"]["bottleneck"],
        on=config["codec"]["tracks"] or "the training tracks",
        # codec.tracks' rows as ingest reads them (or none)
        rows=[(r.track, r.kind, source_of(r)) for r in (CODEC_ROWS or {}).values()],
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
