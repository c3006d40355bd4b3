#!/usr/bin/env bash
# Training throughput and the CUDA paths on one GPU machine, the most wanted figures first. On one H200 the steps
# up to the short training run took 450-520 s (compiling about a minute per graph): the budget skips what is left
# (listed at the end) and GPU_BENCH_STEPS picks steps.
#
#   bash bench/gpu.sh                    # from the repo root; everything it prints also goes to $OUT/gpu.log
#   GPU_BENCH_TINY=1 bash bench/gpu.sh   # the same steps shrunk to run on a CPU
#   GPU_BENCH_STEPS="versions compare-synthetic" bash bench/gpu.sh   # some steps; GPU_BENCH_SIZES: compare-sizes'
#
# Steps: versions; an ImageNet-like JPEG folder (bench/make_jpegs.py); nvImageCodec unpacked where its wheels were
# carried in bench/wheels/; where a batch's time goes on the GPU decode path (bench/decode_split.py) and what each
# decoder waits for (bench/decode_blocks.py); tests/test_gpu.py; at 224 px the trainer's step eager, compiled and as
# CUDA graphs against the torchvision-reference-style loop (--amp) on synthetic batches, then from the JPEGs decoded
# by the loader workers, by the GPU with torchvision's nvJPEG call and with nvImageCodec, compiled
# (bench/compare_training.py, with MFU); the seed's -sz/160, -sz/352 copies and a short real `python3 -m trainer
# train --compile` through every data layout; the other sizes eager and compiled; max-autotune at 224 px. Each step
# has a timeout and the whole script a deadline (GPU_BENCH_BUDGET seconds, default 560), a failed step does not stop
# the ones after it, and the failures are listed at the end (exit status 1 if any). Nothing is downloaded.
# Needs python3 with torch, torchvision, pillow, numpy, tensorboard, pydantic (pytest for test-gpu); the project
# need not be installed: PYTHONPATH is set to the repo root.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/bench-out}
mkdir -p "$OUT"
LOG=$OUT/gpu.log

export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# No wandb run, no downloads: the trainer starts wandb only with these set, and builds no pretrained model.
unset WANDB_API_KEY WANDB_MODE || true
export HF_HUB_OFFLINE=1 TORCH_HOME=${TMPDIR:-/tmp}/gpu-bench-torch-home
PY=${PYTHON:-python3}
WORK=${GPU_BENCH_WORK:-${TMPDIR:-/tmp}/gpu-bench}
BUDGET=${GPU_BENCH_BUDGET:-560}
CORES=$(nproc)

if [[ ${GPU_BENCH_TINY:-0} == 1 ]]; then
    ARCH=resnet18 TRAIN_ARCH=resnet10 SIZES=(64) BATCHES=(16) MAIN_SIZE=64 MAIN_BATCH=16
    CLASSES=4 TRAIN_PER_CLASS=40 VAL_PER_CLASS=3
    SYN_STEPS=4 SYN_WARMUP=2 SYN_ROUNDS=2 JPEG_STEPS=4 JPEG_WARMUP=2 JPEG_ROUNDS=2
    TRAIN_PHASES=("32 16 -sz/160" "48 16 -sz/352" "64 8 ")
    TRAIN_OPTIONS=(--workers 2 --compile)
    WORK=$WORK-tiny
else
    ARCH=resnet50 TRAIN_ARCH=resnet50 SIZES=(128 288) BATCHES=(256 192) MAIN_SIZE=224 MAIN_BATCH=256
    # 100 x 128 training images: one epoch holds a timed window of 32 batches of 256 after 16 warm-up ones.
    CLASSES=100 TRAIN_PER_CLASS=128 VAL_PER_CLASS=5
    SYN_STEPS=15 SYN_WARMUP=5 SYN_ROUNDS=3 JPEG_STEPS=20 JPEG_WARMUP=8 JPEG_ROUNDS=2
    TRAIN_PHASES=("128 256 -sz/160" "224 192 -sz/352" "288 128 ")
    TRAIN_OPTIONS=(--compile)
fi
if [[ -n ${GPU_BENCH_SIZES:-} ]]; then  # a subset of SIZES, each keeping its batch
    read -ra wanted <<<"$GPU_BENCH_SIZES"
    kept_sizes=() kept_batches=()
    for i in "${!SIZES[@]}"; do
        [[ " ${wanted[*]} " == *" ${SIZES[i]} "* ]] && kept_sizes+=("${SIZES[i]}") kept_batches+=("${BATCHES[i]}")
    done
    ((${#kept_sizes[@]})) || { echo "GPU_BENCH_SIZES=$GPU_BENCH_SIZES: none of ${SIZES[*]}" >&2; exit 2; }
    SIZES=("${kept_sizes[@]}") BATCHES=("${kept_batches[@]}")
fi
DATA=$WORK/jpegs
mkdir -p "$WORK"

FAILED=()
STARTED=$SECONDS

# run_step NAME TIMEOUT COMMAND...: runs COMMAND with a timeout that also respects the script's deadline;
# with GPU_BENCH_STEPS set, only the steps it names run.
run_step() {
    local name=$1 limit=$2
    shift 2
    if [[ -n ${GPU_BENCH_STEPS:-} && " $GPU_BENCH_STEPS " != *" $name "* ]]; then
        echo "=== $name: not in GPU_BENCH_STEPS"
        return 0
    fi
    local left=$((BUDGET - (SECONDS - STARTED)))
    if ((left < 15)); then
        echo "=== $name: skipped, the ${BUDGET} s budget is spent"
        FAILED+=("$name (skipped: out of time)")
        return 0
    fi
    ((limit > left)) && limit=$left
    echo
    echo "=== $name (timeout ${limit} s, $((SECONDS - STARTED)) s into the run): $*"
    local begun=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    if ((rc != 0)); then
        ((rc == 124 || rc == 137)) && echo "=== $name: TIMED OUT after $((SECONDS - begun)) s" \
            || echo "=== $name: FAILED with exit status $rc after $((SECONDS - begun)) s"
        FAILED+=("$name (exit $rc)")
    else
        echo "=== $name: ok in $((SECONDS - begun)) s"
    fi
}

main() {  # the steps; unindented, for the heredocs
echo "=== gpu.sh $(date -u +%FT%TZ) on ${HOSTNAME:-?}, $CORES cores, repo $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
grep -m1 "model name" /proc/cpuinfo || true
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
df -h /dev/shm "${TMPDIR:-/tmp}" 2>/dev/null || true  # loader workers hand batches over in /dev/shm: ~6 GB here
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
run_step versions 60 "$PY" - <<'EOF'
import importlib, platform, sys
import torch, torchvision
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
print("torchvision", torchvision.__version__)
for name in ("PIL", "numpy", "fsspec", "tensorboard", "pytest"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError as exc:
        print(name, "MISSING:", exc)
# What `python3 -m trainer train` imports, and the torchvision pieces trainer.data uses.
import trainer.cli, trainer.train, trainer.prepare, trainer.demo_data
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F
assert hasattr(F, "resized_crop") and hasattr(ImageReadMode, "RGB")
print("trainer imports ok; wandb imported:", "wandb" in sys.modules, "pydantic imported:", "pydantic" in sys.modules)
EOF

run_step jpeg-folder 150 "$PY" bench/make_jpegs.py "$DATA" --classes "$CLASSES" \
    --train-per-class "$TRAIN_PER_CLASS" --val-per-class "$VAL_PER_CLASS"

# nvImageCodec, where its wheels were carried to the machine (the machine has no network; bench/nvimgcodec-wheels.txt
# says how to fetch them into bench/wheels/, about 29 MB, not in git): unpacked beside the repo, and put on
# PYTHONPATH where a step says.
WITH_NVIMGCODEC=$PYTHONPATH
if compgen -G "bench/wheels/*.whl" >/dev/null; then
    run_step nvimgcodec 60 bash -c 'for wheel in bench/wheels/*.whl; do "$0" -m zipfile -e "$wheel" "$1" || exit; done' \
        "$PY" "$WORK/nvimgcodec"
    # only where it decodes there (trainer.gpu_decode falls back to nvJPEG quietly); its import also reports the
    # JPEG 2000 and TIFF extensions it lacks as [ERROR] lines: harmless
    if [[ ! -d $WORK/nvimgcodec/nvidia/nvimgcodec ]]; then
        echo "=== nvimgcodec: not unpacked; the GPU decode path is measured with torchvision's nvJPEG only"
    elif timeout 60 env PYTHONPATH="$WORK/nvimgcodec:$PYTHONPATH" "$PY" -c "import sys, torch; from trainer import gpu_decode; \
            sys.exit(not torch.cuda.is_available() or gpu_decode.decoder_for(torch.device('cuda')) != 'nvImageCodec')"
    then
        WITH_NVIMGCODEC=$WORK/nvimgcodec:$PYTHONPATH
    else
        echo "=== nvimgcodec: unpacked, but it does not decode on this machine: measured with nvJPEG only"
    fi
else
    echo "=== nvimgcodec: no wheels in bench/wheels; the GPU decode path is measured with torchvision's nvJPEG only"
fi

# The decoders and the crops of a batch, timed apart: host time to issue, and time until the GPU is done; then
# whether each decoder waits for work queued before it.
run_step decode-split 90 env PYTHONPATH="$WITH_NVIMGCODEC" "$PY" bench/decode_split.py "$DATA" \
    --batch "$MAIN_BATCH" --size "$MAIN_SIZE"
run_step decode-blocks 60 env PYTHONPATH="$WITH_NVIMGCODEC" "$PY" bench/decode_blocks.py "$DATA" --batch "$MAIN_BATCH"
# The GPU paths' tests, the decode path with the decoder above: before the figures that rest on them.
if "$PY" -c "import pytest" 2>/dev/null; then
    run_step test-gpu 150 env PYTHONPATH="$WITH_NVIMGCODEC" "$PY" -m pytest -q --noconftest tests/test_gpu.py \
        -p no:cacheprovider
else
    echo "=== test-gpu: skipped, pytest is not installed"
    FAILED+=("test-gpu (skipped: no pytest)")
fi

# The step at 224 px on synthetic batches: eager, compiled, compiled as CUDA graphs, the reference beside them.
run_step compare-synthetic 240 "$PY" bench/compare_training.py --arch "$ARCH" --sizes "$MAIN_SIZE" --batch "$MAIN_BATCH" \
    --modes synthetic --variants eager compiled graphs --reference amp \
    --steps "$SYN_STEPS" --warmup "$SYN_WARMUP" --rounds "$SYN_ROUNDS"
# From full-size JPEGs: decoded in the loader workers against a batch at a time on the GPU (torchvision's nvJPEG
# call), then on the GPU by nvImageCodec where it was carried. Compiled only: from JPEGs the graphs variant
# measured alike on 2026-12-04 (the data, not the step, bounds both).
run_step compare-jpeg 200 "$PY" bench/compare_training.py --arch "$ARCH" --sizes "$MAIN_SIZE" --batch "$MAIN_BATCH" \
    --data "$DATA" --modes jpeg jpeg-device --variants compiled --reference amp \
    --steps "$JPEG_STEPS" --warmup "$JPEG_WARMUP" --rounds "$JPEG_ROUNDS"
if [[ $WITH_NVIMGCODEC != "$PYTHONPATH" ]]; then
    run_step compare-nvimgcodec 150 env PYTHONPATH="$WITH_NVIMGCODEC" "$PY" bench/compare_training.py \
        --arch "$ARCH" --sizes "$MAIN_SIZE" --batch "$MAIN_BATCH" --data "$DATA" --modes jpeg-device \
        --variants compiled --reference amp --steps "$JPEG_STEPS" --warmup "$JPEG_WARMUP" --rounds "$JPEG_ROUNDS"
fi

run_step resized-copies 120 "$PY" -m trainer prepare "$DATA" --sizes 160 352
# A real training run through every data layout, a new phase each epoch: the -sz/160 and -sz/352 copies, then
# full-size JPEGs with rectangular validation; checkpoints; the CUDA defaults (bf16, channels_last, workers);
# --compile, which compiles a graph per image size (about a minute each on an H100 box's 16 cores).
SCHEDULE=$WORK/gpu-check.toml
{
    echo "description = \"gpu.sh: the trainer's CUDA path through every data layout, one epoch each\""
    echo "arch = \"$TRAIN_ARCH\""
    echo "target = 99.0"
    ep=0
    for phase in "${TRAIN_PHASES[@]}"; do
        read -r sz bs trndir <<<"$phase"
        printf '[[data]]\nep = %d\nsz = %d\nbs = %d\ntrndir = "%s"\n' "$ep" "$sz" "$bs" "${trndir:-}"
        [[ -z ${trndir:-} ]] && printf 'min_scale = 0.5\nrect_val = true\n'
        ep=$((ep + 1))
    done
    printf '[[lr]]\nep = [0, 1]\nlr = [0.05, 0.2]\n[[lr]]\nep = [1, %d]\nlr = [0.2, 0.01]\n' "$ep"
} >"$SCHEDULE"
RUN=$WORK/train-run
rm -rf "$RUN"
run_step trainer-train 240 "$PY" -m trainer train "$DATA" --schedule "$SCHEDULE" --logdir "$RUN" \
    --cache-dir "$WORK/cache" --print-freq 10 --heartbeat-seconds 5 "${TRAIN_OPTIONS[@]}"
if [[ -f $RUN/summary.json ]]; then
    mkdir -p "$OUT/train-run"
    cp "$RUN"/summary.json "$RUN"/metrics.jsonl "$RUN"/verbose.log "$OUT/train-run/" 2>/dev/null || true
    "$PY" - "$RUN" <<'EOF' || true
import json, sys
lines = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
start = next(l for l in lines if l["type"] == "start")["config"]
print(f"trainer-train: bf16 {start['bf16']}, channels_last {start['channels_last']}, decode {start['decode']}, "
      f"compile {start['compile']}")
for e in json.load(open(f"{sys.argv[1]}/summary.json"))["epochs"]:
    print(f"  epoch {e['epoch']}: {e['size']} px, batch {e['global_batch']}, {e['images_per_second']:.0f} img/s "
          f"over the epoch (loader start-up included), top-1 {e['top1']:.1f}, top-5 {e['top5']:.1f}")
EOF
fi

# The other image sizes, eager and compiled, as long as the budget lasts.
run_step compare-sizes 200 "$PY" bench/compare_training.py --arch "$ARCH" --sizes "${SIZES[@]}" \
    --batch "${BATCHES[@]}" --modes synthetic --variants eager compiled --reference amp \
    --steps "$SYN_STEPS" --warmup "$SYN_WARMUP" --rounds "$SYN_ROUNDS"
# torch.compile's max-autotune at 224 px (Triton kernels timed against cuDNN's, then CUDA graphs): minutes of
# autotuning, so last, and only where the budget is left.
run_step compare-autotune 300 "$PY" bench/compare_training.py --arch "$ARCH" --sizes "$MAIN_SIZE" \
    --batch "$MAIN_BATCH" --modes synthetic --variants graphs autotune --reference amp \
    --steps "$SYN_STEPS" --warmup "$SYN_WARMUP" --rounds "$SYN_ROUNDS"

echo
echo "=== gpu.sh done in $((SECONDS - STARTED)) s; log in $LOG"
if ((${#FAILED[@]})); then
    printf '=== failed or skipped: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "=== every step passed"
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
