#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py says what it checks): on a CUDA machine it
# writes results/gpu/<date>-<device>.md; --cpu runs the same paths on the CPU at a small size (CI).
#   benchmarks/gpu_check.sh [--cpu] [--out DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python}"
if [ -x "$here/../.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then py="$here/../.venv/bin/python"; fi
exec "$py" "$here/gpu_check.py" "$@"
