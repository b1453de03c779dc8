# Sourced by benchmarks/gpu_*.sh. sketchkit is not installed on the lent GPU machine:
# `package_tree DIR` lays the checkout out in DIR/sketchkit as pyproject's package-dir mapping
# installs it (zoo/, export/, serving/ as sketchkit.zoo, .export, .serving), with symlinks, so that
# DIR on the import path imports it as installed.
package_tree() {
    mkdir -p "$1/sketchkit"
    for entry in "$PWD"/sketchkit/*; do ln -sfn "$entry" "$1/sketchkit/"; done
    for pkg in zoo export serving; do ln -sfn "$PWD/$pkg" "$1/sketchkit/$pkg"; done
}

# `start_job NAME`: what every one-shot GPU script does first: $OUT checked and made, a work dir
# $WORK, the package tree on the import path, all output also into $OUT/log.txt, and `elapsed`
# (seconds since $START).
start_job() {
    : "${OUT:?set OUT to the folder whose files come back}"
    mkdir -p "$OUT"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    package_tree "$WORK/src"
    export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONSAFEPATH=1  # python -m sketchkit must not put the checkout's own sketchkit/ (no zoo in it) first
    exec > >(tee -a "$OUT/log.txt") 2>&1
}
elapsed() { echo $(($(date +%s) - START)); }

# `machine PYTHON`: the GPU, the Python and the versions the numbers were measured with.
machine() {
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi (TINY=${TINY:-0})"
    "$1" - <<'PY'
import platform, sys
import numpy, torch
print(f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}, available {torch.cuda.is_available()}), numpy {numpy.__version__}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("no triton")
PY
}
