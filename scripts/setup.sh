#!/usr/bin/env bash
# Create (or reuse) .venv and install ghn with its exact pins; fetch the offline data sets if apt is available.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -d /usr/share/games/fortunes ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q && $SUDO apt-get install -y -q dataset-fashion-mnist fortunes
  else
    echo "warning: apt-get not found; Fashion-MNIST/fortunes data tests will fail" >&2
  fi
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import ghn, pytest" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]" --config-settings editable_mode=compat
fi
