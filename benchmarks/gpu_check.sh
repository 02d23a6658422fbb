#!/usr/bin/env bash
# The GPU check in one command (issue 15). The GPU machine has torch but not natdeploy's other dependencies and no
# network, so the wheels the latency-table section needs travel with the run.
#
#   bash benchmarks/gpu_check.sh --prepare     # here, online: fetch the wheels into benchmarks/.gpu_wheels (ignored)
#   bash benchmarks/gpu_check.sh [ARGS]        # on the GPU machine (carry benchmarks/.gpu_wheels): install what is
#                                              # missing into a scratch folder, then run benchmarks/gpu_check.py ARGS
#   bash benchmarks/gpu_check.sh --dry-run     # the same end to end on a CPU, shrunk
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/.gpu_wheels
PY=${PYTHON:-python}
# pymoo and what it imports: the NAT loop (the paper-iteration section) imports it; pinned as tests/constraints.txt
SEARCH_STACK="pymoo|moocore|cffi|pycparser|platformdirs|autograd|cma|alive-progress|about-time|graphemeu|Deprecated"
if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$WHEELS"
    "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --no-deps -d "$WHEELS" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        "xgboost-cpu==3.2.0" "scikit-learn>=1.3" joblib threadpoolctl "scipy>=1.10" pyyaml tqdm \
        $(grep -iE "^($SEARCH_STACK)==" tests/constraints.txt)
    du -sh "$WHEELS"
    exit 0
fi
SITE=$(mktemp -d)
declare -A WHEEL_OF=([xgboost]=xgboost-cpu [sklearn]=scikit-learn [joblib]=joblib [threadpoolctl]=threadpoolctl
                     [scipy]=scipy [yaml]=pyyaml [tqdm]=tqdm [pymoo]=pymoo [moocore]=moocore [cffi]=cffi
                     [pycparser]=pycparser [platformdirs]=platformdirs [autograd]=autograd [cma]=cma
                     [alive_progress]=alive-progress [about_time]=about-time [grapheme]=graphemeu
                     [deprecated]=Deprecated)
missing=()
for mod in "${!WHEEL_OF[@]}"; do
    "$PY" -c "import $mod" 2>/dev/null || missing+=("${WHEEL_OF[$mod]}")
done
if (( ${#missing[@]} )); then
    if [[ -d "$WHEELS" ]]; then
        echo "installing into $SITE: ${missing[*]}"
        "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$SITE" "${missing[@]}"
    else
        echo "missing ${missing[*]} and no $WHEELS (run: bash benchmarks/gpu_check.sh --prepare); the latency-table" \
             "section will report the import error" >&2
    fi
fi
PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/gpu_check.py "$@"
