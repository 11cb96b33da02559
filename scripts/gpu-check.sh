#!/usr/bin/env bash
# One short GPU check, for a machine with an NVIDIA GPU and the torch==2.11.0
# wheel installed, but no Rust toolchain: run a pixpro binary built elsewhere
# against that machine's libtorch.
#
#   scripts/gpu-check.sh BIN TUXSEG_DIR OUT_DIR [SEEDS]
#
# BIN: a pixpro binary (e.g. target/release/pixpro, stripped); TUXSEG_DIR: a
# folder made by `pixpro data tuxseg`; SEEDS: default "0 1 2". Writes logs,
# bench JSON and each seed's probe results under OUT_DIR, and everything in
# OUT_DIR/results.tar.gz.
#
# With REF=PATH set to a checkout of zdaxie/PixPro (and torchvision importable
# by python3), the ResNet-50 benchmark also runs the reference on the same GPU
# through scripts/reference_bench.py, interleaved, in fp32 and in bf16.
set -uo pipefail
BIN=$1 DATA=$2 OUT=$3 SEEDS=${4:-0 1 2}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

step machine
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || exit 1
python3 -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$BIN" doctor || exit 1

step "NCCL engine, a group of one (RANK=0 WORLD_SIZE=1): 20 steps of the cpu preset"
RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 \
    "$BIN" pretrain --data "$DATA/pretrain" --out "$OUT/nccl-w1" --preset cpu --device cuda --steps 20 2>&1 | tee "$OUT/nccl-w1.txt"
if grep -q "ranks on nccl" "$OUT/nccl-w1.txt" && grep -q "^finished" "$OUT/nccl-w1.txt"; then echo "nccl: ok"; else echo "nccl: FAILED"; fi

HERE=$(cd "$(dirname "$0")" && pwd)
for prec in fp32 bf16; do
    step "bench: ResNet-50, 224 px, batch 64, $prec"
    "$BIN" bench --data "$DATA/pretrain" --preset paper-r50 --batch-size 64 --device cuda --workers 12 \
        --precision "$prec" --steps 10 --json | tee "$OUT/bench-r50-224-b64-$prec.txt"
    if [ -n "${REF:-}" ]; then
        step "reference: ResNet-50, 224 px, batch 64, $prec"
        python3 "$HERE/reference_bench.py" --ref "$REF" --data "$DATA/pretrain" --mode train --device cuda \
            --precision "$prec" --arch resnet50 --image-size 224 --batch-size 64 --workers 12 \
            --steps 10 --warmup 3 | tee "$OUT/reference-r50-224-b64-$prec.txt"
    fi
done
step "bench: the cpu preset's recipe on the GPU, fp32 and bf16"
"$BIN" bench --data "$DATA/pretrain" --preset cpu --device cuda --precision fp32 --steps 20 --json | tee "$OUT/bench-cpu-preset.txt"
"$BIN" bench --data "$DATA/pretrain" --preset cpu --device cuda --precision bf16 --steps 20 --json | tee "$OUT/bench-cpu-preset-bf16.txt"

# The demo as users get it: the preset's `auto`, which is bf16 on a GPU of
# compute capability 8.0 or later (the benches above pin their precision).
for s in $SEEDS; do
    step "demo seed $s: pretrain (cpu preset) + probe vs random init"
    "$BIN" demo --data "$DATA" --out "$OUT/demo-s$s" --seed "$s" --device cuda | tee "$OUT/demo-s$s.txt"
done

step summary
grep -h '^train:' "$OUT"/bench-*.txt
grep -h 'images_per_sec' "$OUT"/reference-*.txt 2>/dev/null
grep -h 'TuxSeg val mIoU' "$OUT"/demo-s*.txt
tar czf "$OUT/results.tar.gz" -C "$OUT" --exclude='*.safetensors' --exclude=results.tar.gz .
