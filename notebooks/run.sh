#!/usr/bin/env bash
# Executes every notebook (or the ones named) headlessly, in place, with the evcxr Rust kernel,
# and stops at the first cell error. Installs what is missing, from the package registries only:
# Jupyter's nbconvert + ipykernel into a virtual environment under target/, and evcxr_jupyter
# with cargo (≈ 15 min on 2 cores, once). Usage: notebooks/run.sh [notebooks/NAME.ipynb ...]
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${NOTEBOOK_VENV:-target/notebook-venv}"
timeout="${NOTEBOOK_CELL_TIMEOUT:-1800}"          # seconds per cell
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac

if ! "$venv/bin/python" -c "import nbconvert, nbclient, ipykernel" 2>/dev/null; then
    echo "== installing Jupyter (nbconvert, nbclient, ipykernel) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet nbconvert nbclient ipykernel
fi
export PATH="$venv/bin:$HOME/.cargo/bin:$PATH"

if ! command -v evcxr_jupyter >/dev/null; then
    echo "== installing evcxr_jupyter (cargo install, ≈ 15 min on 2 cores)"
    cargo install --locked evcxr_jupyter@0.22.0
fi
if ! jupyter kernelspec list 2>/dev/null | grep -q '^ *rust '; then
    echo "== registering the evcxr kernel"
    evcxr_jupyter --install
fi

if [ $# -gt 0 ]; then notebooks=("$@"); else notebooks=(notebooks/*.ipynb); fi
# evcxr builds each cell in its own scratch crate; a global target dir would redirect it.
unset CARGO_TARGET_DIR
total=0
for nb in "${notebooks[@]}"; do
    echo "== executing $nb"
    start=$(date +%s)
    jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.kernel_name=rust \
        --ExecutePreprocessor.timeout="$timeout" \
        --ExecutePreprocessor.record_timing=False \
        "$nb"
    took=$(( $(date +%s) - start ))
    total=$(( total + took ))
    echo "== $nb: ${took} s"
done
echo "== all ${#notebooks[@]} notebooks executed in ${total} s"
