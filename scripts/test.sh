#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine, then runs every test.
#   - system packages (apt) where missing (Xvfb and X11 tools for the window, g++ for the kernel emulation,
#     dcm2niix as the DICOM reference, dcmtk as a real DICOM network client, Chromium and its WebDriver for the
#     browser console),
#   - a Python venv (.venv) with the independent references (scripts/requirements-test.txt),
#   - the real data: ../shared/data in the workplace, else fetched once from the public sources into .cache/,
#   - the code's form: cargo fmt --check and cargo clippy -D warnings,
#   - cargo tests (unit + integration), then the Python tests against the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

say() { printf '\n== %s\n' "$*"; }

need_apt=()
command -v c++ >/dev/null || need_apt+=(g++)
command -v Xvfb >/dev/null || need_apt+=(xvfb)
command -v xwd >/dev/null || need_apt+=(x11-apps)
command -v xdotool >/dev/null || need_apt+=(xdotool)
dpkg -s libxcursor1 >/dev/null 2>&1 || need_apt+=(libxcursor1)
dpkg -s libx11-6 >/dev/null 2>&1 || need_apt+=(libx11-6)
command -v dcm2niix >/dev/null || need_apt+=(dcm2niix)
command -v storescu >/dev/null || need_apt+=(dcmtk)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing system packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

say "python venv"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt

say "real test data"
if [ -f "$ROOT/../shared/data/pyneal/testSeries.nii.gz" ]; then
    export HYPER_RT_DATA="$ROOT/../shared/data"
else
    export HYPER_RT_DATA="$ROOT/.cache/data"
    .venv/bin/python scripts/fetch_test_data.py "$HYPER_RT_DATA"
fi
echo "using $HYPER_RT_DATA"

# NVRTC and ptxas from the wheels: the kernel test compiles every CUDA kernel and fails on register spills
NVIDIA_DIR=$(.venv/bin/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export LD_LIBRARY_PATH="$NVIDIA_DIR/lib:${LD_LIBRARY_PATH:-}"
export PTXAS="$NVIDIA_DIR/bin/ptxas"
export HYPER_RT_REQUIRE_NVRTC=1

say "form: rustfmt and clippy"
cargo fmt --check || { echo "cargo fmt --check: run cargo fmt" >&2; exit 1; }
cargo clippy --release --locked --all-targets -- -D warnings

say "build (release)"
cargo build --release --locked

say "cargo tests"
cargo test --release --locked

say "python tests (independent references)"
HYPER_RT_BIN="$ROOT/target/release/hyper-rt" .venv/bin/python -m pytest -q tests/python
