rule separate:
    message:
        "Separating batch {wildcards.batch} into context and target"
    input:
        unpack(separate_input),
    output:
        # its tracks; their <track>/{context,target}.flac and separate.json in
        # results/separate/{batch}/
        record=record("separate"),
        **intermediate("audio", audio_folder("separate")),
    params:
        settings=settings("separate"),
        shaped_by=shaped_by("separate"),
        sample_rate=config["ingest"]["sample_rate"],
    threads: config["separate"]["threads"]
    resources:
        gpu=config["separate"]["gpus"],
    log:
        "results/logs/separate/{batch}.log",
    benchmark:
        "results/benchmarks/separate/{batch}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/separate.py"
