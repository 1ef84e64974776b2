#!/usr/bin/env bash
# Every GPU claim checked in one go, on one GPU, within about 10 minutes, every figure written to one results folder:
#   1. the tests marked `cuda` (no host sync per batch, float16, sync-free aggregators, a CUDA graph);
#   2. bench/aggregators.py --device cuda against torchjd (goal: >= 10x at m = 10);
#   3. bench/mtl_step.py --device cuda (the multi-task step against an ordinary one, and against torchjd);
#   4. bench/cuda_graph.py (one aggregation step as a CUDA graph against the same step run eagerly);
#   5. the course's 20-epoch augmented ResNet (bench/course_table.py --rows augment; goal >= 0.945);
#   6. the Gramian engine against torchjd's and against building J, and an IWRM step against SGD (bench/gramian.py).
#
#   bash bench/gpu_suite.sh [results folder]      # on the GPU machine (default folder: bench/results/gpu-<date>)
#   bash bench/gpu_suite.sh --dry-run             # anywhere, on the CPU: every step at toy size (CI runs this)
# Run from the repository root. The dry run checks that each step still runs; it measures nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out=${1:-bench/results/gpu-$(date +%Y%m%d-%H%M)}
[ $dry = 1 ] && out=$(mktemp -d)
mkdir -p "$out"
run() {  # name, command...: the command's output goes to the screen and to $out/<name>.txt; a failure stops the suite
  local name=$1; shift
  echo "== $name: $*"
  local t=$SECONDS
  "$@" 2>&1 | tee "$out/$name.txt"
  echo "== $name: $((SECONDS - t)) s"
}
if [ $dry = 1 ]; then
  run tests python -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider   # collected, skipped without CUDA
  run aggregators python bench/aggregators.py --device cpu --n 2000 --reps 2 --ms 2 10 --methods MGDA SDMGrad UPGrad
  run mtl_step python bench/mtl_step.py --device cpu --ms 2 --steps 2 --reps 1
  run cuda_graph python bench/cuda_graph.py --dry-run --ms 2 10
  run course_augment python bench/course_table.py --rows augment --dry-run
  run gramian python bench/gramian.py --device cpu --sizes 8 --reps 1 --models cnn
  echo "dry run passed; outputs in $out"
  exit 0
fi
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu_suite.sh: no CUDA here; use --dry-run')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
run tests python -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
run aggregators python bench/aggregators.py --device cuda --ms 2 10 32 --reps 20 --json "$out/aggregators_cuda.json"
m10=$(python - "$out/aggregators_cuda.json" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))['rows'] if r['m'] == 10 and r['method'].startswith(('MGDA (mtlearn', 'SDMGrad', 'UPGrad'))]
worst = min(rows, key=lambda r: r['speedup'])
print(f"GOAL gpu_aggregators_m10_min_speedup {worst['speedup']:.2f} >= 10 {'PASS' if worst['speedup'] >= 10 else 'MISS'} ({worst['method']})")
PY
)
echo "$m10" | tee -a "$out/aggregators.txt"
run mtl_step python bench/mtl_step.py --device cuda
run cuda_graph python bench/cuda_graph.py
run course_augment python bench/course_table.py --rows augment
run gramian python bench/gramian.py --device cuda
grep -h '^GOAL' "$out"/*.txt | tee "$out/goals.txt"
echo "results in $out"
