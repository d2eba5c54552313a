#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the gpu-marked tests, the GPU benchmarks, then where the
# GPU step's time goes, op by op.
# Made for the device machine (CuPy and torch preinstalled, no network):
#     bash bench/run_gpu.sh [OUTDIR]
# Logs land in OUTDIR (default: $OUT if set, else ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import picogpt, cupy; print('cupy', cupy.__version__, 'gpu available:', picogpt.gpu_available())" 2>&1 | tee "$out/env.txt"
python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$out/pytest-gpu.txt"
python3 bench/decode.py --device gpu --batch 1 16 --json "$out/bench.jsonl" 2>&1 | tee "$out/bench-decode.txt"
python3 bench/train.py --device gpu --json "$out/bench.jsonl" 2>&1 | tee "$out/bench-train.txt"
python3 bench/decode.py --device cpu --batch 1 --repeats 2 --json "$out/bench.jsonl" 2>&1 | tee "$out/bench-decode-cpu.txt"
python3 bench/breakdown.py --device gpu --shape gpt2-1024 --steps 3 2>&1 | tee "$out/breakdown-train.txt"
python3 bench/breakdown.py --device gpu --decode --batch 1 --steps 3 2>&1 | tee "$out/breakdown-decode.txt"
