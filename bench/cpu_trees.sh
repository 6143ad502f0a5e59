#!/bin/bash
# Whole-process wall, CPU and peak RSS of `dawnchorus predict` on the same recordings for several source
# trees (e.g. worktrees of older commits), interleaved round by round: the before/after of CPU-s per
# audio hour on one machine (issue 16).
#
#   bench/cpu_trees.sh ROUNDS ENGINE MODEL AUDIO_DIR NAME=SRC[@MODEL] [NAME=SRC[@MODEL] ...]
#   git worktree add /tmp/before16 4ded72a
#   flock /tmp/bench.lock bench/cpu_trees.sh 3 onnx /tmp/dawnchorus-bench/efficientnet_b0_calibrated.pt \
#       /tmp/dawnchorus-bench/soundscapes before16=/tmp/before16/src now=src
#
# A tree given as NAME=SRC@MODEL predicts with that model file instead of MODEL (each tree's default
# network: the before/after of a changed default). Each tree gets its own copy of its model (so cached graphs never mix); settings the current tree added
# since (train.min_steps_per_epoch, selftrain) are dropped from the copy so that older trees can read it:
# the network and its weights are the same. One untimed warm-up run per tree exports its graph. Every
# *_10min_*.ogg / *.ogg of AUDIO_DIR (non-recursive) is predicted with --format csv. Prints one line per
# run and, per tree, the medians and CPU-s per audio hour.
set -euo pipefail
ROUNDS=$1; ENGINE=$2; MODEL=$3; AUDIO_DIR=$4; shift 4
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=$REPO/.venv/bin/python
WORK=$(mktemp -d /tmp/dawnchorus-cpu-trees.XXXXXX)
mapfile -t FILES < <(ls "$AUDIO_DIR"/*_10min_*.ogg 2>/dev/null || ls "$AUDIO_DIR"/*.ogg)
tree_src() { local src=${1#*=}; echo "${src%%@*}"; }
HOURS=$("$PY" -c "import soundfile as sf, sys; print(sum(sf.info(f).duration for f in sys.argv[1:]) / 3600)" "${FILES[@]}")

for spec in "$@"; do
  name=${spec%%=*}; mkdir -p "$WORK/$name"
  tree_model=$MODEL; [[ $spec == *@* ]] && tree_model=${spec#*@}
  "$PY" - "$tree_model" "$WORK/$name/model.pt" <<'EOF'
import json, sys, torch
model = torch.load(sys.argv[1], weights_only=True, map_location="cpu")
config = json.loads(model["config"])
config.get("train", {}).pop("min_steps_per_epoch", None)
config.pop("selftrain", None)
model["config"] = json.dumps(config)
torch.save(model, sys.argv[2])
EOF
  PYTHONPATH=$(tree_src "$spec") "$REPO/.venv/bin/dawnchorus" predict "$WORK/$name/model.pt" "${FILES[0]}" \
    --out "$WORK/$name/warm" --format csv --engine "$ENGINE" > /dev/null
done

echo "trees: $*; $HOURS h of audio in ${#FILES[@]} files; engine $ENGINE; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  for spec in "$@"; do
    name=${spec%%=*}
    /usr/bin/time -o "$WORK/$name.time" -a -f "%e %U %S %M" env PYTHONPATH="$(tree_src "$spec")" \
      "$REPO/.venv/bin/dawnchorus" predict "$WORK/$name/model.pt" "${FILES[@]}" --out "$WORK/$name/out$round" \
      --format csv --engine "$ENGINE" > /dev/null
    echo "round $round $name: $(tail -1 "$WORK/$name.time") (wall s, user s, sys s, max RSS kB)"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
for spec in "$@"; do
  name=${spec%%=*}
  "$PY" - "$name" "$HOURS" "$WORK/$name.time" <<'EOF'
import statistics, sys
name, hours, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rows = [list(map(float, line.split())) for line in open(path) if line.strip()]
wall = statistics.median(r[0] for r in rows)
cpu = statistics.median(r[1] + r[2] for r in rows)
rss = statistics.median(r[3] for r in rows) / 1024
print(f"{name}: median wall {wall:.1f} s ({hours * 3600 / wall:.0f}x real time), CPU {cpu:.1f} s "
      f"= {cpu / hours:.1f} CPU-s per audio hour, peak RSS {rss:.0f} MB")
EOF
done
rm -rf "$WORK"
