#!/usr/bin/env bash
# The GPU run of benchmarks/gpu.py on a lent device machine (no registry there), in one call:
#   here:       ./benchmarks/gpu_wheels.sh            (fills .gpu-wheels/, about 8 MB)
#   the device: run(command="bash benchmarks/gpu_device.sh", carry=[".gpu-wheels"], timeout_s=560)
# Writes $OUT/gpu.json (every row, the checks, the top-10 kernels), $OUT/gpu.log and the GPU's
# state. Sized to finish in about 7 minutes on an H100/H200 (--steps 20, 1,200 long-tail
# utterances); every row is printed as it is measured, so a run cut short keeps what it did.
set -uo pipefail
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
site=/tmp/mooer-wheels
python3 -m pip install -q --no-index --no-deps --target "$site" .gpu-wheels/*.whl \
    > "$out/pip.log" 2>&1 || { echo "wheel install failed:"; tail -20 "$out/pip.log"; }
export PYTHONPATH=".:$site"
python3 -c "import torch, transformers, peft, lightning, deepspeed, hydra; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tee "$out/versions.txt"
timeout 520 python3 benchmarks/gpu.py --json "$out/gpu.json" --steps 20 --warmup 5 \
    --repeats 3 --tail_utterances 1200 "$@" 2>&1 | tee "$out/gpu.log"
