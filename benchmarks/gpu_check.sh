#!/usr/bin/env bash
# One prepared speed check for a GPU machine (written for an H200 with 16 cores):
#   benchmarks/gpu_check.sh            SemArt-sized: 19,244 real-size JPEGs and real description
#                                      lengths; builds the caches, times two EfficientNet-B0
#                                      fusion epochs and the bare backbone's training throughput.
#                                      Target: <= 20 s per epoch, within 2x of the bare backbone.
#   benchmarks/gpu_check.sh --small    the same steps on 16 rows and a tiny text encoder, on CPU
#                                      in about a minute (run by the tests).
# Further arguments go to benchmarks/epoch_speed.py (e.g. --json PATH, --work DIR, --compile).
# Figures land in results/gpu_check.json unless --json says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

json=results/gpu_check.json
if [[ "${1:-}" == "--small" ]]; then
    shift
    size=(--small --rows 16 --batch-size 8 --image-size 64 --max-length 128 --epochs 2
          --bare-steps 2 --bare-warmup 1)
    limit=300
    full=0
else
    size=(--rows 19244 --batch-size 64 --epochs 2 --cache-batch-size 256 --bare-steps 60
          --bare-warmup 10)
    limit=480  # eight minutes for everything, data generation included
    full=1
fi

# The JSON path is needed below; take the last --json given, if any.
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ "${args[i]}" == "--json" ]]; then json="${args[i + 1]}"; fi
done

start=$(date +%s)
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" timeout "$limit" \
    python benchmarks/epoch_speed.py --pipelines default --bare-backbone --fresh-caches \
    --json "$json" "${size[@]}" "$@"
echo "gpu_check: $(( $(date +%s) - start )) s in all (limit ${limit} s); figures in $json"

python - "$json" "$full" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
full = sys.argv[2] == "1"
run = report["default"]
epoch = run["seconds_per_epoch"]
bare = report["rows"] / run["bare_backbone"]["img_per_s"]
# seconds_per_epoch leaves out the first epoch, which also pays for the run's warm-up.
print(f"seconds per epoch: {', '.join(f'{s:.1f}' for s in run['epoch_seconds'])} "
      f"(after the first: {epoch:.1f}); bare backbone {bare:.1f} s per epoch; "
      f"ratio {epoch / bare:.2f}")
print(f"caches built in: text {run['text_cache_seconds']:.1f} s, "
      f"images {run['image_cache_seconds']:.1f} s")
if full:
    print(f"target <= 20 s per epoch: {'met' if epoch <= 20 else 'NOT met'}; "
          f"within 2x of the bare backbone: {'met' if epoch <= 2 * bare else 'NOT met'}")
else:
    print("--small: a check that every step runs; the targets apply to the full GPU run")
PY
