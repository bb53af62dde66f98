rule augment:
    message:
        "Pitch and tempo variants of batch {wildcards.batch}"
    input:
        separated=record("separate"),
        **kept_audio("audio", audio_folder("separate")),
    output:
        # its variants; their <variant>/{context,target}.flac and augment.json beside it
        record=record("augment"),
        **intermediate("audio", audio_folder("augment")),
    params:
        settings=settings("augment"),
        shaped_by=shaped_by("augment"),
        tracks=augmented_tracks,
    threads: config["augment"]["threads"]
    resources:
        gpu=config["augment"]["gpus"],
    log:
        "results/logs/augment/{batch}.log",
    benchmark:
        "results/benchmarks/augment/{batch}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/augment.py"
