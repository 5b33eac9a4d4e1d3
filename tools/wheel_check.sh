#!/usr/bin/env bash
# Build the wheel, install it in a fresh virtual environment outside the repository, and
# run the commands a new user would, from an empty directory: the proof that the package
# (grammar, templates and the shipped specs) works without the source tree.
#
#   tools/wheel_check.sh [BUILD_PYTHON]      (`make wheel-check` passes the project's venv)
#
# BUILD_PYTHON builds the wheel (it needs hatchling: the dev extra). The fresh venv is made
# by $PYTHON (default python3.11, else python3), not from any existing environment: torch
# comes from PyTorch's CPU index or, first, a wheel in pip's find-links (PIP_FIND_LINKS,
# the offline copy where there is one); the other dependencies from the default index or
# pip's cache. KEEP=1 keeps the temporary directory. Exit status 0 when every step worked.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_PYTHON=${1:-${BUILD_PYTHON:-python3}}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH=${TORCH:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/energydsl-wheel-check.XXXXXX")
case "$TMP" in "$ROOT"/*) echo "wheel-check: $TMP is inside the repository" >&2; exit 1;; esac
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$TMP"' EXIT

step() {  # step NAME COMMAND...: run, time, and stop on failure with the output shown
    local name=$1 began ended log="$TMP/log.txt"
    shift
    began=$(date +%s.%N)
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "wheel-check: FAILED: $name" >&2
        exit 1
    fi
    ended=$(date +%s.%N)
    awk -v name="$name" -v t="$(echo "$began $ended")" \
        'BEGIN { split(t, a, " "); printf "%-44s %6.1f s\n", name, a[2] - a[1] }'
}

step "build the wheel" "$BUILD_PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation \
    -w "$TMP/dist" "$ROOT"
WHEEL=$(ls "$TMP"/dist/energydsl-*.whl)
step "fresh venv ($("$PYTHON" --version 2>&1))" "$PYTHON" -m venv "$TMP/venv"
PIP=("$TMP/venv/bin/python" -m pip --disable-pip-version-check)
# torch alone from the CPU index (never the default index's CUDA build); a wheel in
# find-links is listed first and wins when it is the same file
step "install torch (CPU build)" "${PIP[@]}" install --quiet --no-deps \
    --index-url "$TORCH_INDEX" "$TORCH"
step "install the wheel and its dependencies" "${PIP[@]}" install --quiet "$TORCH" "$WHEEL"
"$TMP/venv/bin/python" -c "import torch; assert '+cpu' in torch.__version__ or \
not torch.backends.cuda.is_built(), torch.__version__"

mkdir "$TMP/work"
cd "$TMP/work"
BIN="$TMP/venv/bin"
OUT="$TMP/work/out"
step "energydsl specs" "$BIN/energydsl" specs
grep -q "^  dem " "$TMP/log.txt"
step "energydsl compile dem -o OUT" "$BIN/energydsl" compile dem -o "$OUT"
test -s "$OUT/dem.py"
step "energydsl train dem (1 epoch, H=K=8)" "$BIN/energydsl" train dem --epochs 1 \
    --size H=8 --size K=8 --out "$OUT/run"
test -s "$OUT/run/checkpoint.pt"
step "energydsl compare --epochs 1 --limit 2" "$BIN/energydsl" compare --epochs 1 --limit 2 \
    --out "$OUT/cmp"
test -s "$OUT/cmp/RESULTS.md" && test -d "$OUT/cmp/masked_gaussian-sm"
# the trained run and a compiled model pickle in one process and load in another
step "pickle a run, load it in a new process" "$BIN/python" -c "
import pickle, energydsl
model, config = energydsl.load_run('$OUT/run')
pickle.dump((model, config, energydsl.compile('gbrbm')(D=4, K=2)), open('$OUT/run.pkl', 'wb'))"
step "unpickle it" "$BIN/python" -c "
import pickle
model, config, other = pickle.load(open('$OUT/run.pkl', 'rb'))
assert type(model).__name__ == 'DEM' and config.model == 'dem' and other.D == 4"
echo "wheel-check: ok ($(basename "$WHEEL") in a fresh venv, run from $TMP/work)"
