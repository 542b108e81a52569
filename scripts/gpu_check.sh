#!/usr/bin/env bash
# GPU check: CUDA-vs-CPU parity tests and the generator benchmark beside PyTorch CUDA, ending with a short table.
#
#   scripts/gpu_check.sh --prepare   # on the build machine (has cargo): builds into .gpu/ (git-ignored)
#   scripts/gpu_check.sh             # on the GPU machine (no Rust, no network): runs from .gpu/
#
# The GPU machine needs the NVIDIA driver, NVRTC (the CUDA toolkit's lib64, or the nvidia-cuda-nvrtc wheel) and,
# for the comparison, python3 with torch and numpy. Outputs also go to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=${HYPER_RT_GPU_DIR:-.gpu}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    cargo build --release --locked
    test_bin=$(cargo test --release --locked --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tests" and m.get("executable"):
        print(m["executable"])')
    mkdir -p "$GPU_DIR"
    # stripped: the copies travel to the GPU machine, where the working tree is size-limited
    strip -o "$GPU_DIR/hyper-rt" target/release/hyper-rt
    strip -o "$GPU_DIR/tests" "$test_bin"
    echo "prepared $GPU_DIR: $(ls "$GPU_DIR" | tr '\n' ' ')"
    exit 0
fi

OUT=${OUT:-$(mktemp -d)}
log() { printf '\n== %s\n' "$*"; }

# NVRTC: the toolkit's, else a wheel's
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null); do
    if ls "$d"/libnvrtc.so* >/dev/null 2>&1; then
        export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
        break
    fi
done
log "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
date -u +"%Y-%m-%d %H:%M UTC" | tee -a "$OUT/device.txt"

log "parity tests (CUDA vs CPU)"
timeout 300 "$GPU_DIR/tests" --ignored --test-threads 1 --nocapture cuda_parity 2>&1 | tee "$OUT/parity.log"
parity=${PIPESTATUS[0]}

log "benchmark (hyper-rt CUDA beside PyTorch CUDA, same weights)"
weights="$GPU_DIR/pggan-1024-random.safetensors"
[ -f "$weights" ] || python3 scripts/convert_pggan.py --random --resolution 1024 --seed 1 -o "$weights"
timeout 420 python3 scripts/bench_generator.py --device cuda --weights "$weights" --batch 1,8 --repeats 5 \
    --variants "${TORCH_VARIANTS:-eager,eager-tf32,compile-tf32}" --binary "$GPU_DIR/hyper-rt" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}

log "kernel tuning and per-layer time (TF32, batch 1, tuned kernels)"
# the tuning times the gather and the staged kernel of every layer and checks the staged output against the gather
# kernel's; its table (both families' milliseconds side by side, the choice and why) ends the summary
timeout 120 "$GPU_DIR/hyper-rt" bench-generator --device cuda --precision tf32 --kernels tuned --weights "$weights" \
    --batch 1 --repeats 3 --layers > "$OUT/layers.log" 2>&1
sed -n '/^kernel tuning/,/^sum/p' "$OUT/layers.log" > "$OUT/layers.txt"

log "summary"
grep -E "^(checkpoint|[0-9]+px)" "$OUT/parity.log" || true
# per-layer parity (the whole table is in parity.log): only the layers out of bounds
grep -E "relative L2 .* > " "$OUT/parity.log" | sort -u || echo "per-layer parity: every layer within bounds (or not run)"
grep -E "^test result" "$OUT/parity.log" || echo "parity tests did not finish (exit $parity)"
grep -E "^(variant|pytorch|hyper-rt|batch)" "$OUT/bench.log" || echo "benchmark did not finish (exit $bench)"
if [ -s "$OUT/layers.txt" ]; then cat "$OUT/layers.txt"; else echo "kernel tuning did not finish:"; tail -5 "$OUT/layers.log"; fi
[ "$parity" -eq 0 ] && [ "$bench" -eq 0 ]
