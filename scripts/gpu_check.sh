#!/usr/bin/env bash
# GPU check: CUDA-vs-CPU parity tests, the generator benchmark beside PyTorch CUDA and the live pipeline drawing on
# the GPU, ending with a short table.
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
    # the 1024 px weights (about 90 MB) are made on the GPU machine: the carried folder is limited to 64 MiB
    rm -f "$GPU_DIR"/*.safetensors
    # stripped: the copies travel to the GPU machine, where the working tree is size-limited
    strip -o "$GPU_DIR/hyper-rt" target/release/hyper-rt
    strip -o "$GPU_DIR/tests" "$test_bin"
    echo "prepared $GPU_DIR: $(ls "$GPU_DIR" | tr '\n' ' ')"
    exit 0
fi

OUT=${OUT:-$(mktemp -d)}
log() { printf '\n== %s\n' "$*"; }

# One deadline for the whole check (a lent GPU machine runs one command for at most 10 minutes): each step gets
# what is left, keeping enough for the steps after it; the benchmark prints its rows as they are measured, so a
# step cut short still shows what it measured.
budget_s=${GPU_CHECK_BUDGET_S:-520}
started_s=$SECONDS
left_s() { echo $(( budget_s - (SECONDS - started_s) - ${1:-0} )); }
cap() { local left; left=$(left_s "$2"); [ "$left" -lt "$1" ] && echo $(( left > 10 ? left : 10 )) || echo "$1"; }

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
# driver, NVRTC, what each GPU runs (compiles the kernels once: the later steps read them from the kernel cache),
# and a first drawing against the CPU (built-in network, float32 and TF32, as a CUDA graph)
timeout 90 "$GPU_DIR/hyper-rt" gpu-info --check | tee -a "$OUT/device.txt"

log "parity tests (CUDA vs CPU), at most $(cap 240 200) s"
timeout "$(cap 240 200)" "$GPU_DIR/tests" --ignored --test-threads 1 --nocapture cuda_parity 2>&1 | tee "$OUT/parity.log"
parity=${PIPESTATUS[0]}

weights="$GPU_DIR/pggan-1024-random.safetensors"
[ -f "$weights" ] || python3 scripts/convert_pggan.py --random --resolution 1024 --seed 1 -o "$weights"

log "kernel tuning and per-layer time (TF32, batch 1, tuned kernels), at most $(cap 90 150) s"
# the tuning times the gather and the staged kernel of every layer and checks the staged output against the gather
# kernel's; its table (both families' milliseconds side by side, the choice and why) ends the summary
timeout "$(cap 90 150)" "$GPU_DIR/hyper-rt" bench-generator --device cuda --precision tf32 --kernels tuned \
    --weights "$weights" --batch 1 --repeats 3 --layers > "$OUT/layers.log" 2>&1
sed -n '/^kernel tuning/,/^sum/p' "$OUT/layers.log" > "$OUT/layers.txt"

log "benchmark (hyper-rt CUDA, then PyTorch CUDA on the same weights), at most $(left_s 40) s"
timeout "$(left_s 40)" python3 scripts/bench_generator.py --device cuda --weights "$weights" --batch 1,8 --repeats 5 \
    --variants "${TORCH_VARIANTS:-compile-tf32,eager-tf32,eager}" --binary "$GPU_DIR/hyper-rt" --variant-timeout 150 \
    2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}

# The live pipeline as a lab runs it, drawing on the GPU in its generator thread: the demo (simulated subject,
# decoder, the test run streamed over ZeroMQ at 20x) with [live] device = "cuda", so that a GPU failure is an error
# at the start (as is a first image that differs from the CPU's), and a failure mid-run shows as the generator's move
# to the CPU.
live_s=$(left_s 5); [ "$live_s" -gt 60 ] && live_s=60
if [ "$live_s" -ge 20 ]; then
    live_dir=$(mktemp -d)
    printf '[live]\ndevice = "cuda"\n' > "$live_dir/gpu.toml"
    log "the live pipeline on the GPU (demo at 20x, [live] device = cuda), at most $live_s s"
    timeout "$live_s" "$GPU_DIR/hyper-rt" demo --config "$live_dir/gpu.toml" --headless --speed 20 \
        --data "$live_dir/data" --session-root "$live_dir/sessions" > "$OUT/live.log" 2>&1
    live=$?
    cp "$live_dir"/sessions/*/live_summary.json "$OUT/" 2>/dev/null
    # it must have drawn on the GPU from start to end
    if [ "$live" -eq 0 ] && { ! grep -q "generating on GPU" "$OUT/live.log" || grep -q "moved to the CPU" "$OUT/live.log"; }; then
        live=1
    fi
    tail -25 "$OUT/live.log"
    rm -rf "$live_dir"
else
    live=124
    echo "no time left for the live pipeline check" > "$OUT/live.log"
fi

log "summary"
cat "$OUT/device.txt"
grep -E "^(checkpoint|[0-9]+px)" "$OUT/parity.log" || true
# per-layer parity (the whole table is in parity.log): only the layers out of bounds
grep -E "relative L2 .* > |failed: " "$OUT/parity.log" | sort -u || echo "parity: every figure within bounds (or not run)"
grep -E "^test result" "$OUT/parity.log" || echo "parity tests did not finish (exit $parity)"
grep -E "^(variant|pytorch|hyper-rt|batch)" "$OUT/bench.log" || echo "benchmark measured nothing (exit $bench)"
[ "$bench" -eq 0 ] || echo "benchmark did not finish (exit $bench): the rows above are what it measured"
if [ -s "$OUT/layers.txt" ]; then cat "$OUT/layers.txt"; else echo "kernel tuning did not finish:"; tail -5 "$OUT/layers.log"; fi
grep -E "generating on|agrees with the CPU|differs from the CPU|^frames|^generate |moved to the CPU|trials decoded live|no time left" "$OUT/live.log" || true
[ "$live" -eq 0 ] && echo "live pipeline on the GPU: ok" || echo "live pipeline on the GPU: FAILED (exit $live, see live.log)"
[ "$parity" -eq 0 ] && [ "$bench" -eq 0 ] && [ "$live" -eq 0 ]
