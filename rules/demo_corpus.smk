rule demo_corpus:
    message:
        "Synthesizing demo song {wildcards.name}"
    output:
        mixture="results/demo_corpus/{name}/mixture.flac",
        stems=expand("results/demo_corpus/{{name}}/stems/{stem}.flac", stem=STEMS),
        truth="results/demo_corpus/{name}/truth.json",
    params:
        seconds=config["demo"]["seconds"],
        seed=config["seed"],
        variety=config["demo"]["variety"],
    log:
        "results/logs/demo_corpus/{name}.log",
    benchmark:
        "results/benchmarks/demo_corpus/{name}.tsv"
    conda:
        "../envs/audio.yaml"
    script:
        "../workflow/scripts/demo_corpus.py"
