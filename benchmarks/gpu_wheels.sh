#!/usr/bin/env bash
# Wheels benchmarks/gpu.py needs that the device machine's image lacks (it reaches no registry),
# for its Python 3.12, into .gpu-wheels/ (git-ignored). Run here, then on the device:
#   device run --carry .gpu-wheels: python3 -m pip install --no-index --no-deps .gpu-wheels/*.whl
#   && PYTHONPATH=. python3 benchmarks/gpu.py --json $OUT/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-wheels
rm -rf "$out" && mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
# pure-Python or manylinux wheels of what the image does not hold (its list: the device tool's
# KINDS.md); --no-deps: the rest is there already
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any -d "$out" \
    hydra-core==1.3.8 omegaconf==2.3.1 soundfile==0.14.0 \
    cffi pycparser webdataset==1.0.2 braceexpand kaldi-native-fbank==1.23.0 hjson \
    pydantic pydantic-core annotated-types typing-inspection liger-kernel
# source archives only: wheels of their Python made here (DeepSpeed's ops build at run time,
# and the benchmark uses none; omegaconf's parser runtime is pure Python)
DS_BUILD_OPS=0 "$python" -m pip wheel -q --no-deps --no-build-isolation -w "$out" \
    deepspeed==0.19.8 antlr4-python3-runtime==4.9.3
ls -la "$out" && du -sh "$out"
