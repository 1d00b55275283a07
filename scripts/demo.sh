#!/usr/bin/env bash
# Create/reuse .venv, then predict the weights of a real model with the shipped predictor and report what it did.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p out
exec .venv/bin/ghn-predict --model timm:resnet18 --model-kwargs '{"num_classes": 10, "in_chans": 1}' --input-shape 1,28,28 \
  --ghn checkpoints/ghn-fmnist --out out/resnet18.safetensors "$@"
