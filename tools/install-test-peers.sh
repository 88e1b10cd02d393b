#!/usr/bin/env bash
# Installs the peer libraries the optional comparison tests and benchmarks run against.
# - timm and torchvision's pure-Python model code, into .peers/ (outside the virtual
#   environment): PyPI's torchvision is linked against CUDA and cannot load its C++ operators
#   beside the CPU build of PyTorch; tests/peers.py imports it without them.
# - tf-keras (Keras 2, for transformers' TensorFlow classes and keras.applications' RegNets),
#   into the environment without its dependencies: its declared dependency "tensorflow" would
#   replace tensorflow-cpu's files with a build that cannot differentiate grouped convolutions.
# Nothing here is needed to use the package.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -m pip install --quiet -c constraints.txt --no-deps --upgrade --target .peers \
  "torchvision==0.28.0" "timm==1.0.31"
"$python" -m pip install --quiet -c constraints.txt --no-deps "tf-keras==2.21.0"
echo "peers installed: timm, torchvision (.peers/), tf-keras"
