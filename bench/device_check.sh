#!/usr/bin/env bash
# The GPU check, in one run on the lent NVIDIA machine (under 5 minutes on an H200):
#   1. the CUDA tests (real CUDA graph capture, the engine on cuda against eager);
#   2. bench/device_check.py: the engine on cuda with cuda_graph over aot and over inductor,
#      against eager; its JSON object is the last line printed.
# Nothing is installed: the machine's image holds torch and every package warmgraph imports
# (click, tqdm, filelock, safetensors, tokenizers, numpy, pyyaml, pytest, transformers), and the
# checkout is used in place through PYTHONPATH. Run from anywhere: bench/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PYTHON:-python3}
"$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), file=sys.stderr)'
"$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_capture.py tests/test_engine_devices.py -k cuda >&2
"$PY" bench/device_check.py "$@"
