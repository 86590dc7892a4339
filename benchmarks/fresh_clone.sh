#!/usr/bin/env bash
# `benchmarks/fresh_clone.sh [REF]`: the README's `make test` on a fresh clone of commit REF (default HEAD; what is not
# committed is not in the clone), timed in wall seconds and in the machine's busy CPU seconds, between two runs of the
# machine's yardstick (benchmarks/auto_threshold.py on 32 and 256 images), so that a suite time can be read against how
# fast the machine was that hour (the suite has taken 348-461 s on the 2-core machine).
#
# The clone goes beside this repository (the tests read ../shared/data from there) and is removed afterwards. uv gets an
# empty cache folder of its own, so the install is timed as a new user's would be; the user's own uv cache is untouched.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ref=${1:-HEAD}
[[ -x $repo/.venv/bin/python ]] || { echo "the yardstick runs in this checkout's .venv: run \`make .venv/.installed\` first" >&2; exit 2; }
log=$(mktemp --suffix=.log)
clone=$(mktemp -d "$(dirname "$repo")/fresh-clone.XXXXXX")
export UV_CACHE_DIR
UV_CACHE_DIR=$(mktemp -d)
trap 'rm -rf "$clone" "$UV_CACHE_DIR"' EXIT

yardstick() {
    echo "yardstick ($1):"
    "$repo/.venv/bin/python" "$repo/benchmarks/auto_threshold.py" --encoders efficientnet_lite0 --sizes 32,256 | tail -2
}

busy_cpu_s() {  # CPU seconds the whole machine has spent busy since boot (/proc/stat: user, nice, system, irq, softirq)
    awk '/^cpu /{print ($2 + $3 + $4 + $7 + $8) / 100}' /proc/stat
}

yardstick before
git clone --quiet "$repo" "$clone"
git -C "$clone" checkout --quiet "$ref"
started=$(date +%s) busy=$(busy_cpu_s)
(cd "$clone" && make test) > "$log" 2>&1 || { tail -40 "$log"; echo "make test failed (log: $log)"; exit 1; }
# The busy CPU seconds say how much work the run was, apart from waits; they are the machine's, so nothing else may run.
echo "make test on a fresh clone of $(git -C "$clone" rev-parse --short HEAD): $(( $(date +%s) - started )) s," \
    "$(awk -v a="$busy" -v b="$(busy_cpu_s)" 'BEGIN{printf "%.0f", b - a}') busy CPU-s (log: $log)"
grep -E "passed|failed" "$log" | tail -1
yardstick after
