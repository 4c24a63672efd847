#!/bin/sh
# Real-model sweep on the packaged SmolLM2-135M: none vs dynamic-ntk on passkey, shortest lengths first
# (each step resumes into the same folder), then the HTML report.
# The full default quick suite is `longreach bench --methods "none;dynamic-ntk" --out DIR --report`.
set -e
OUT=${OUT:-benchmarks/results/bench-quick}
for L in 1k,2k 1k,2k,4k 1k,2k,4k,10k; do
  .venv/bin/python -m longreach.cli bench --methods "none;dynamic-ntk" --tasks passkey \
    --lengths "$L" --depths 3 --prompt plain --out "$OUT" --no-progress "$@"
  .venv/bin/python -m longreach.cli report "$OUT"
done
