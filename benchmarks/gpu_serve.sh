#!/usr/bin/env bash
# Issue 19 on the lent GPU machine: the engine in process and owl_generate (KIND_GPU) through a
# real tritonserver, measured in one run (benchmarks/bench_gpu_serve.py). The machine has no
# network, so what it lacks travels in parts, one device call each, from the repository root:
#
#   here, once:  bash benchmarks/gpu_serve.sh prepare      # lays out .gpu/c1 .. .gpu/c6 (git-ignored)
#   call 1:      carry [".gpu/c1"]  bash benchmarks/gpu_serve.sh c1     # tritonserver (nvidia-pytriton wheel)
#   calls 2-5:   carry [".gpu/cN"]  bash benchmarks/gpu_serve.sh cN     # onnxruntime-gpu, in parts
#   call 6:      carry [".gpu/c6"]  OUT=$OUT bash benchmarks/gpu_serve.sh run
#
# `prepare` (here, with network to the package index): the wheels of ../shared/tools/gpu-chunks.sh
# (nvidia-pytriton 0.7.0, onnxruntime-gpu 1.31.1 for CUDA 13 in 57 MiB parts, numpy 1.26.4) plus
# onnx and its needs for the server's numpy-1 environment, the owl (Magenta) converted and built
# into a gpu-flavor repository holding only owl_generate, and owlplain_generate without the
# engine's CUDA graphs (the wheel's tritonserver has only the Python backend: no step models),
# and the previous release's sketchkit/ (the in-process baseline). Each part
# travels alone beside the checkout (~6 MiB): every call stays under the device tool's 64 MiB.
# `run`: joins and checks the wheel, makes the server's environment (/root/tv: numpy 1.26,
# onnxruntime-gpu, onnx; sketchkit through a symlink tree shaped like the package-dir install),
# runs the in-process rows, starts tritonserver with the GPU repository and runs the client rows.
# Writes $OUT/inprocess.json, $OUT/triton.json, $OUT/triton_plain.json, $OUT/log.txt, $OUT/server.log.
set -uo pipefail
G=/root/g
part() { dd if="$1" of="$2" bs=1M skip="$3" ${4:+count="$4"} status=none; }

case "${1:-}" in
prepare)
    set -e
    rm -rf .gpu/c1 .gpu/c2 .gpu/c3 .gpu/c4 .gpu/c5 .gpu/c6
    mkdir -p .gpu/c1 .gpu/c2 .gpu/c3 .gpu/c4 .gpu/c5 .gpu/c6/whl
    W=$(mktemp -d)
    PIP=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp)
    "${PIP[@]}" --platform manylinux_2_35_x86_64 nvidia-pytriton==0.7.0 -d "$W"
    "${PIP[@]}" --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1 -d "$W"
    "${PIP[@]}" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        numpy==1.26.4 onnx==1.23.2 ml_dtypes==0.5.4 protobuf typing_extensions -d .gpu/c6/whl
    mv "$W"/nvidia_pytriton-*.whl .gpu/c1/
    ORT=$(ls "$W"/onnxruntime_gpu-*.whl)
    basename "$ORT" > .gpu/c6/ort.name
    sha256sum "$ORT" | cut -d' ' -f1 > .gpu/c6/ort.sha256
    for k in 0 1 2 3; do part "$ORT" ".gpu/c$((k + 2))/ort.part$k" $((k * 57)) 57; done
    part "$ORT" .gpu/c6/ort.part4 228
    PY=${PYTHON:-.venv/bin/python}
    "$PY" -c "from sketchkit.magenta_onnx import import_magenta; import_magenta('../shared/data/magenta-gen/owl.gen.json', '$W/owl', name='owl')"
    "$PY" -m sketchkit serve build-repo "$W/owl" --out "$W/repo" --flavor gpu --no-stateful --name owl
    "$PY" -m sketchkit serve build-repo "$W/owl" --out "$W/plain" --flavor gpu --no-stateful --name owlplain --no-engine-cuda-graphs
    mkdir -p .gpu/c6/repo && cp -r "$W/repo/owl_generate" "$W/plain/owlplain_generate" .gpu/c6/repo/
    mkdir -p .gpu/c6/old && git archive b361367 sketchkit | tar -x -C .gpu/c6/old
    rm -rf "$W"
    du -sm .gpu/c?
    ;;
c1)
    mkdir -p $G/pt
    python3 -m zipfile -e .gpu/c1/nvidia_pytriton-*.whl $G/pt
    chmod +x $G/pt/pytriton/tritonserver/bin/tritonserver $G/pt/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub
    ls $G/pt/pytriton/tritonserver/bin
    ;;
c2 | c3 | c4 | c5)
    mkdir -p $G/parts && cp .gpu/"$1"/ort.part* $G/parts/ && ls -la $G/parts
    ;;
run)
    : "${OUT:?set OUT}"
    exec > >(tee -a "$OUT/log.txt") 2>&1
    START=$(date +%s)
    say() { echo "[gpu_serve $(($(date +%s) - START))s] $*"; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    cp .gpu/c6/ort.part4 $G/parts/
    WHL=$G/$(cat .gpu/c6/ort.name)
    cat $G/parts/ort.part0 $G/parts/ort.part1 $G/parts/ort.part2 $G/parts/ort.part3 $G/parts/ort.part4 > "$WHL"
    [ "$(sha256sum "$WHL" | cut -d' ' -f1)" = "$(cat .gpu/c6/ort.sha256)" ] || { say "onnxruntime-gpu wheel: sha256 mismatch"; exit 1; }
    SITE=/root/tv/lib/python3.12/site-packages
    python3 -m venv --without-pip /root/tv
    python3 -m pip install -q --no-deps --no-index --target $SITE .gpu/c6/whl/*.whl "$WHL" || exit 1
    # sketchkit is not installed: lay the checkout out as pyproject's package-dir mapping installs it
    mkdir -p $G/src/sketchkit
    for entry in "$PWD"/sketchkit/*; do ln -sf "$entry" $G/src/sketchkit/; done
    for pkg in zoo export serving; do ln -sfn "$PWD/$pkg" $G/src/sketchkit/$pkg; done
    echo $G/src > $SITE/sketchkit-src.pth
    NVLIBS=$(ls -d /opt/torch/.venv/lib/python3.12/site-packages/nvidia/*/lib | paste -sd:)
    export LD_LIBRARY_PATH=$NVLIBS PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1
    PY=/root/tv/bin/python
    $PY -c "import numpy, onnxruntime as o; print('server env: numpy', numpy.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"
    MODEL=$PWD/.gpu/c6/repo/owl_generate/1
    say "in process"
    timeout 240 $PY benchmarks/bench_gpu_serve.py inprocess "$MODEL" --old "$PWD/.gpu/c6/old" --json "$OUT/inprocess.json"
    say "tritonserver"
    BK=$G/bk/python && mkdir -p $BK
    PB=$G/pt/pytriton/tritonserver/backends/python
    cp $PB/libtriton_python.so $PB/triton_python_backend_utils.py $BK/
    ln -sf $G/pt/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub $BK/
    REPO=$G/repo && rm -rf $REPO && cp -r .gpu/c6/repo $REPO
    PATH=/root/tv/bin:$PATH PYTHONPATH=$SITE:$G/src LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:$G/pt/nvidia_pytriton.libs:$NVLIBS \
        $G/pt/pytriton/tritonserver/bin/tritonserver --model-repository=$REPO --backend-directory=$G/bk \
        --http-address=127.0.0.1 --grpc-address=127.0.0.1 --http-port=18000 --grpc-port=18001 \
        --allow-metrics=false --allow-gpu-metrics=false --exit-timeout-secs=5 > "$OUT/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 120); do
        $PY -c "import http.client as h; c=h.HTTPConnection('127.0.0.1',18000,timeout=2); c.request('GET','/v2/health/ready'); exit(c.getresponse().status!=200)" 2>/dev/null && break
        kill -0 $SERVER 2>/dev/null || break
        sleep 1
    done
    say "server ready? $(grep -c 'successfully loaded' "$OUT/server.log") model(s) loaded"
    timeout 100 $PY benchmarks/bench_gpu_serve.py triton http://127.0.0.1:18000 owl_generate --seconds 12 --json "$OUT/triton.json"
    timeout 100 $PY benchmarks/bench_gpu_serve.py triton http://127.0.0.1:18000 owlplain_generate --seconds 12 --json "$OUT/triton_plain.json"
    grep "sketchkit engine" "$OUT/server.log" | tail -3
    kill $SERVER; wait $SERVER 2>/dev/null
    say "done"
    ;;
*)
    echo "usage: bash benchmarks/gpu_serve.sh prepare|c1|c2|c3|c4|c5|run" >&2
    exit 2
    ;;
esac
