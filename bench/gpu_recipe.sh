#!/usr/bin/env bash
# The GPU recipe (config/gpu.yaml) on one GPU machine, for train.seed 0, 1 and 2.
#
# Seed 0 is the recipe as a user runs it, from nothing: `snakemake --cores all --configfile
# config/gpu.yaml`, timed. Once its shards exist, seeds 1 and 2 train and evaluate beside it
# in copies of the project (the data hard-linked, `--config "train={seed: N}"`, which reruns
# train and evaluate only), so seed 0's time is an upper bound of the recipe's alone.
#
# Everything runs in the background (setsid), so the work outlives one 10-minute device call:
#
#     bash bench/gpu_recipe.sh start [SECONDS]   install, start, then wait up to SECONDS (540)
#     bash bench/gpu_recipe.sh wait [SECONDS]    wait again (the next call, on the same machine)
#
# Each call ends by packing into $OUT/recipe.tgz what is finished: each seed's metrics.json,
# train.json, stats, logs and job times, and seed 0's first examples. Then,
# here: `python bench/gpu_recipe.py recipe.tgz` prints the table.
#
# What the GPU machine lacks comes in two archives, too big for one call together: first
# `install` with .site312.tgz carried (snakemake, mlflow, librosa, torchcrepe, ...: Python
# 3.12 wheels unpacked), then at once `start` with .ffbin.txz (static ffmpeg and ffprobe,
# from npm's @ffmpeg-installer and @ffprobe-installer); BENCHMARKS.md says how they were made.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=/tmp/recipe
SITE=${SITE:-/tmp/site}  # SITE=none: the packages are installed already (a smoke test here)
export PYTHONPATH=$SITE:$REPO PYTHONUNBUFFERED=1 PATH=/tmp/ffbin:$PATH
SNAKE="python3 -m snakemake --configfile ${CONFIGS:-config/gpu.yaml}"

seed_dir() { if [ "$1" = 0 ]; then echo "$REPO"; else echo "$WORK/seed$1"; fi; }

copy_project() {  # a copy of the project whose data are hard links, the rest copies
    local dst=$1
    mkdir -p "$dst/results"
    for f in "$REPO"/* "$REPO"/.snakemake; do
        [ "$(basename "$f")" = results ] || cp -a "$f" "$dst/"
    done
    for d in "$REPO"/results/*; do
        case $(basename "$d") in
            demo_corpus|ingest|separate|clip|tokenize|shards) cp -al "$d" "$dst/results/" ;;
            *) cp -a "$d" "$dst/results/" ;;
        esac
    done
}

drive() {  # the recipe, seeds 1 and 2 beside seed 0 once the shards exist
    local t0=$SECONDS
    $SNAKE --cores all shard >"$WORK/seed0.shard.log" 2>&1 || { echo failed >"$WORK/seed0.rc"; }
    echo "shards: $((SECONDS - t0)) s" >>"$WORK/times"
    for s in 1 2; do
        copy_project "$WORK/seed$s"
        (cd "$WORK/seed$s" && $SNAKE --cores 4 --config "train={seed: $s}" \
            >"$WORK/seed$s.log" 2>&1; echo $? >"$WORK/seed$s.rc"; \
            echo "seed $s: $((SECONDS - t0)) s" >>"$WORK/times") &
    done
    $SNAKE --cores all >"$WORK/seed0.log" 2>&1
    echo $? >"$WORK/seed0.rc"
    echo "seed 0 from nothing: $((SECONDS - t0)) s" >>"$WORK/times"
    wait
    touch "$WORK/done"
}

pack() {
    for s in 0 1 2; do
        local d
        d=$(seed_dir $s)
        mkdir -p "$WORK/pack/seed$s"
        cp -r "$d/results/evaluate/metrics.json" "$d/results/train/train.json" \
            "$d/results/shards/stats.json" "$d/results/benchmarks" "$WORK/seed$s"*.log \
            "$WORK/pack/seed$s/" 2>/dev/null
    done
    cp "$WORK/times" "$WORK/pack/" 2>/dev/null
    mkdir -p "$WORK/pack/examples"
    cp "$REPO"/results/evaluate/examples/0[0-3]_* "$REPO"/results/evaluate/examples/*.png \
        "$REPO/results/evaluate/index.html" "$WORK/pack/examples/" 2>/dev/null
    tar czf "$OUT/recipe.tgz" -C "$WORK/pack" .
    ls -la "$OUT"
}

wait_for() {
    local until=$((SECONDS + $1))
    while [ ! -e "$WORK/done" ] && [ $SECONDS -lt "$until" ]; do
        sleep 15
        echo "--- $(date +%T)"; cat "$WORK/times" 2>/dev/null
        tail -n 2 "$WORK"/seed*.log 2>/dev/null | grep -v '^$' | cut -c1-160
    done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
    [ -e "$WORK/done" ] || echo "not done yet: what is finished comes back"
    cat "$WORK/times" "$WORK"/*.rc 2>/dev/null
    pack
}

install() {  # what the call carried: .site312.tgz, .ffbin.txz (static ffmpeg and ffprobe)
    if [ -e .site312.tgz ] && [ "$SITE" != none ] && [ ! -e "$SITE/snakemake" ]; then
        mkdir -p "$SITE" && tar xzf .site312.tgz -C "$SITE" || exit 1
    fi
    if [ -e .ffbin.txz ] && [ ! -e /tmp/ffbin/ffprobe ]; then
        mkdir -p /tmp/ffbin && tar xJf .ffbin.txz -C /tmp/ffbin || exit 1
    fi
    ls "$SITE" | wc -l; ffprobe -version | head -n 1
}

case ${1:-} in
    install) install ;;
    start)
        mkdir -p "$WORK"
        install
        python3 -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
        setsid nohup bash "$0" drive >"$WORK/driver.log" 2>&1 < /dev/null &
        wait_for "${2:-540}" ;;
    drive) drive ;;
    wait) wait_for "${2:-540}" ;;
    *) echo "usage: $0 install|start|wait [SECONDS]" >&2; exit 2 ;;
esac
