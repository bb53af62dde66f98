localrules:
    fetch_weights,


# Local: on clusters it runs on the login node, which has internet.
rule fetch_weights:
    message:
        "Fetching {wildcards.mode} weights of {wildcards.family} model {wildcards.name}"
    output:
        "resources/weights/{mode}/{family}/{name}.json",
    wildcard_constraints:
        mode="pretrained|random",
        family="demucs|codec",
    params:
        seed=config["seed"],
    log:
        "results/logs/fetch_weights/{mode}-{family}-{name}.log",
    benchmark:
        "results/benchmarks/fetch_weights/{mode}-{family}-{name}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/fetch_weights.py"
