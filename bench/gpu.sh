#!/usr/bin/env bash
# The GPU numbers of docs/benchmarks.md, in one go on the first GPU (Pythia-410m shape, random weights, 3 steps):
#
#   bash bench/gpu.sh OUT_DIR
#
# 1. a tiny CUDA smoke run of `rlhflab train` (fails fast if anything in the loop is CPU-only);
# 2. rlhflab bench: PPO fp32 and bf16 (both role layouts), GRPO fp32 (shared);
# 3. TRL 1.11's PPOTrainer and GRPOTrainer at the same settings, fp32 (skipped where `import trl` fails);
# 4. the offline demo end to end on the GPU.
# Each stage has its own time limit and a failed stage does not stop the next; everything is logged to OUT_DIR/log.txt.
# PYTHON picks the interpreter (default python3); RLHFLAB_PYTHIA_DIR must name Pythia-410m's config + tokenizer
# folder when this is not a source checkout with ../shared/assets beside it.
set -u
out=$(mkdir -p "${1:-bench-gpu}" && cd "${1:-bench-gpu}" && pwd)
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" TRL_EXPERIMENTAL_SILENCE=1
work=$(mktemp -d)
exec > >(tee -a "$out/log.txt") 2>&1

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | grep -v -E "it/s\]|Loading weights|Writing model shards" | tail -n 40
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$py -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'gpu', torch.cuda.get_device_name(0))"

stage smoke 60 $py -m rlhflab bench --model-shape tiny --roles shared --steps 1 --device cuda
stage bench-ppo-fp32 150 $py -m rlhflab bench --model-shape pythia-410m --roles shared,separate --steps 3 \
    --device cuda --dtype fp32 --json "$out/bench-ppo-fp32.json"
stage trl-ppo 130 $py "$here/bench/trl/ppo.py" --shape pythia-410m --steps 3 --device cuda --workdir "$work" \
    --json "$out/trl-ppo.json"
stage bench-grpo-fp32 100 $py -m rlhflab bench --model-shape pythia-410m --roles shared --steps 3 --algo grpo \
    --device cuda --dtype fp32 --json "$out/bench-grpo-fp32.json"
stage trl-grpo 130 $py "$here/bench/trl/group.py" --algo grpo --shape pythia-410m --steps 3 --device cuda \
    --workdir "$work" --json "$out/trl-grpo.json"
stage bench-ppo-bf16 110 $py -m rlhflab bench --model-shape pythia-410m --roles shared,separate --steps 3 \
    --device cuda --dtype bf16 --json "$out/bench-ppo-bf16.json"
RLHFLAB_HOME="$work/home" stage demo 150 $py -m rlhflab demo --output-dir "$work/demo"
rm -rf "$work"
