#!/usr/bin/env bash
# Issue 5's GPU benchmarks in one call: separation, tokenization, loader vs model, generation,
# training throughput. Each script prints its table to stdout as it goes; its stderr (progress
# bars, library warnings) goes to a log file, shown only when it fails, so the tables stay
# readable in a short output tail. A failure never stops the run: the failures are listed last.
# The whole run stays under BUDGET seconds (default 470: 8 minutes with start-up): each script
# gets at most its own cap and never more than what is left of the budget.
#
# torch.compile starts from an empty cache (TORCHINDUCTOR_CACHE_DIR): separation's compiled
# variant compiles cold, demucs_compile after it warm. ONLY="separate tokenize" runs those.
# All the scripts no longer fit one device call: run ONLY="separate compile tokenize",
# ONLY="loader generate train" and ONLY="tokenize encoder augment codec" in three, each with
# BUDGET=560.
#
#     bash bench/gpu_all.sh      (from anywhere; PYTHON=python3, BUDGET=470, SMOKE=0 by default)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-470}
LOGS=${OUT:-$(mktemp -d)}/bench-logs  # under $OUT on the device machine, so logs come back
mkdir -p "$LOGS"
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
export TORCHINDUCTOR_CACHE_DIR
deadline=$((SECONDS + BUDGET))

"$PY" - <<'PYEOF'
import importlib.metadata as md
import platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, "
      f"cuda {torch.version.cuda}, device "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
versions = []
for pkg in ("torchaudio", "demucs", "transformers", "auraloss", "webdataset", "soundfile", "numpy", "PyYAML",
            "safetensors", "tqdm"):
    try:
        versions.append(f"{pkg} {md.version(pkg)}")
    except md.PackageNotFoundError:
        versions.append(f"{pkg} MISSING")
print(", ".join(versions), flush=True)
PYEOF

failures=()
run() {  # run CAP_SECONDS NAME SCRIPT ARGS...
    local cap=$1 name=$2
    shift 2
    if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then
        return
    fi
    local left=$((deadline - SECONDS))
    local limit=$((cap < left ? cap : left))
    echo
    echo "=== $name: $PY $* (limit ${limit} s)"
    if ((limit < 30)); then
        failures+=("$name: skipped, out of time")
        return
    fi
    local start=$SECONDS rc=0
    timeout -k 10 "$limit" "$PY" "$@" 2>"$LOGS/$name.err" || rc=$?
    echo "=== $name: rc $rc in $((SECONDS - start)) s"
    if ((rc != 0)); then
        if ((rc == 124 || rc == 137)); then
            failures+=("$name: timed out after $limit s")
        else
            failures+=("$name: rc $rc")
        fi
        echo "--- last lines of its stderr ($LOGS/$name.err):"
        tail -n 25 "$LOGS/$name.err"
    fi
}

# Sizes: 12 audio-minutes over 6 tracks (240..30 s) for separation and tokenization (the
# issue asks for >= 10), loader vs model at the README's GPU batch (32 x 10 s windows).
# SMOKE=1: tiny sizes and the tiny preset, to check the whole chain on a CPU in minutes.
if [[ ${SMOKE:-0} == 1 ]]; then
    run 300 separate bench/separate_gpu.py --seconds 2 1 --variants fp32 fp32-compiled
    run 120 tokenize bench/tokenize_gpu.py --seconds 6 3 --repeat 1
    run 120 encoder bench/codec_encoder.py --codecs dac_44khz --batch 2 --seconds 0.5 --repeat 1
    run 120 augment bench/augment.py --seconds 5
    run 120 codec bench/codec_gpu.py --minutes 0.5 --songs 3 --seconds 10 --held-out 1 \
        --set channels=8 dimension=32 lstm_layers=1 codebook_size=64
    run 150 loader bench/loader_gpu.py --workers 0 2 --batch 8 --frames 150 --batches 20 \
        --shards 2 --samples 100 --preset tiny --steps 3 --compile no
    run 90 generate bench/generate_gpu.py --preset tiny --batch 1 4 --frames 40
    run 120 train bench/train_throughput.py --preset tiny --batch 4 --frames 150 --steps 2 \
        --compile no
else
    run 270 separate bench/separate_gpu.py --seconds 240 180 120 90 60 30 \
        --variants bf16 fp32 bf16-compiled
    run 150 compile bench/demucs_compile.py --batch 16 --modes default
    run 200 tokenize bench/tokenize_gpu.py --seconds 240 180 120 90 60 30
    run 150 encoder bench/codec_encoder.py
    run 120 augment bench/augment.py --devices cuda cpu
    run 240 codec bench/codec_gpu.py --minutes 2.5
    run 150 loader bench/loader_gpu.py --batch 32 --frames 750 --compile both
    run 220 generate bench/generate_gpu.py --preset base --batch 1 64 --frames 750
    run 120 train bench/train_throughput.py --preset base --batch 32 --frames 750 --compile yes
fi
echo
echo "=== total $SECONDS s; logs in $LOGS"
if ((${#failures[@]})); then
    echo "FAILED:"
    printf '  %s\n' "${failures[@]}"
    exit 1
fi
echo "all benchmarks ran"
