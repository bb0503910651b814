#!/usr/bin/env bash
# An interpreter with torch (CPU build) for the simulated cluster's torch.distributed test
# (tests/test_azureml_cluster.py); prints its path. A venv over the system site-packages (the
# project and debugpy come from there), so the shared interpreter keeps its own packages:
# torch 2.13 wants a newer setuptools than the one installed. Reused while it imports torch.
set -euo pipefail
venv="${AML_MAGICS_TORCH_VENV:-$HOME/.cache/aml_magics/torch-venv}"
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    rm -rf "$venv"
    python -m venv --system-site-packages "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 >&2
fi
echo "$venv/bin/python"
