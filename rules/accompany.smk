rule accompany:
    message:
        "Playing along with the backings of {params.sheet}"
    input:
        unpack(accompany_input),
    output:
        directory("results/accompany"),  # <track>/{backing,solo,mix}.wav, index.html
    params:
        sheet=config["accompany"]["tracks"],
        backings=accompany_backings(),
        settings={k: settings(k) for k in ("ingest", "separate", "tokenize", "accompany")},
    threads: config["accompany"]["threads"]
    resources:
        gpu=config["accompany"]["gpus"],
    log:
        "results/logs/accompany/accompany.log",
    benchmark:
        "results/benchmarks/accompany/accompany.tsv"
    conda:
        "../envs/play.yaml"
    script:
        "../workflow/scripts/accompany.py"
