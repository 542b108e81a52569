#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read bytes from outside (wire message, NIfTI, DICOM, PAR/REC,
# config): the targets of tests/fuzz/targets.rs under libFuzzer (cargo fuzz), longer than the suite's bounded
# stable-Rust run. See docs/reliability.md.
#
#   scripts/fuzz.sh                  300 s for each of the five targets
#   scripts/fuzz.sh 60 nifti dicom   60 s for the named targets
#
# Needs nightly Rust and cargo-fuzz; installs them where missing (rustup, crates.io). The seeds are the real files
# the suite uses (run scripts/test.sh once first: it makes .venv and finds the data). Crashes are saved under
# tests/fuzz/artifacts/TARGET/ and the script exits non-zero; the summary table goes to target/fuzz-summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-300}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(protocol_message nifti dicom parrec config)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

CORPUS=target/fuzz-corpus
echo "== seeds -> $CORPUS"
HYPER_RT_FUZZ_CORPUS="$PWD/$CORPUS" cargo test --release --locked --test tests -- --ignored write_fuzz_corpus -q

echo "== building the targets (nightly, AddressSanitizer)"
cargo +nightly fuzz build --fuzz-dir tests/fuzz -O

summary=target/fuzz-summary.md
printf '| target | seconds | executions | exec/s | coverage (edges) | corpus | crashes |\n|---|---|---|---|---|---|---|\n' > "$summary"
failed=0
for t in "${TARGETS[@]}"; do
    echo "== $t: $SECS s"
    log=target/fuzz-$t.log
    mkdir -p "$CORPUS/$t"
    set +e
    cargo +nightly fuzz run --fuzz-dir tests/fuzz -O "$t" "$CORPUS/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
    units=$(find "$CORPUS/$t" -type f | wc -l)
    crashes=0
    if [ $rc -ne 0 ]; then
        crashes=$(find "tests/fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
        [ "$crashes" -gt 0 ] || crashes="run failed (rc $rc)"
        failed=1
        echo "   FAILED: see $log and tests/fuzz/artifacts/$t/"
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$SECS" "$runs" "$speed" "$cov" "$units" "$crashes" >> "$summary"
done
echo
cat "$summary"
exit $failed
