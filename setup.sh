#!/usr/bin/env bash
# Sets up ubnas-tf on a fresh Debian/Ubuntu machine: system packages (Fashion-MNIST IDX
# files, graphviz), a virtual environment in .venv with the pinned requirements, and the
# package itself in editable mode. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
need_apt=0
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt=1
command -v dot >/dev/null 2>&1 || need_apt=1
if [ "$need_apt" = 1 ]; then
  echo "== apt: dataset-fashion-mnist graphviz"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist graphviz
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
echo "== pip install -r requirements.txt -r requirements-nodeps.txt"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# Without their dependencies: see the file's header.
.venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "== ready: .venv/bin/python tools/search.py --flagfile=flags/fashion_mnist.flags"
