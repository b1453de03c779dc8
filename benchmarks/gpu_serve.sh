#!/usr/bin/env bash
# Issue 19 on the lent GPU machine: the engine in process and owl_generate (KIND_GPU) through a
# real tritonserver, measured in one run (benchmarks/bench_gpu_serve.py). The machine has no
# network, so what it lacks travels as one tar in parts, one device call each, from the
# repository root:
#
#   here, once:     bash benchmarks/gpu_serve.sh prepare     # lays out .gpu/p1 .. .gpu/pN (git-ignored)
#   calls 1..N:     carry [".gpu/pK"]  bash benchmarks/gpu_serve.sh part pK
#   the last call:  OUT=$OUT bash benchmarks/gpu_serve.sh run  (nothing to carry)
#
# `prepare` (here, with network to the package index) packs into .gpu/payload.tar: the wheels of
# ../shared/tools/gpu-chunks.sh (nvidia-pytriton 0.7.0 = tritonserver 2.51 with the Python backend;
# onnxruntime-gpu 1.31.1, a CUDA 13 build; numpy 1.26.4) with onnx and its needs for the server's
# numpy-1 environment; the owl (Magenta) built into a gpu-flavor repository holding owl_generate
# and owlplain_generate (the engine without CUDA graphs; the wheel's tritonserver has only the
# Python backend, so no step models); and b401ed7's sketchkit/ (the in-process baseline: the
# draw before issue 27, the same engine, rows on the GPU with CUDA graphs). It cuts the tar into parts that each fit the device tool's 64 MiB beside this
# checkout (measured as it is now: the shipped models make it ~15 MiB).
# `run`: joins and checks the tar, makes the server's environment (/root/tv: numpy 1.26,
# onnxruntime-gpu, onnx; sketchkit through a symlink tree shaped like the package-dir install),
# runs the in-process rows, starts tritonserver with the GPU repository and runs the client rows.
# Writes $OUT/inprocess.json, $OUT/triton.json, $OUT/triton_plain.json, $OUT/log.txt, $OUT/server.log.
set -uo pipefail
G=/root/g

case "${1:-}" in
prepare)
    set -e
    rm -rf .gpu/p[0-9]* .gpu/payload.tar
    W=$(mktemp -d)
    P=$W/payload && mkdir -p "$P/whl" "$P/repo" "$P/old"
    PIP=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp)
    "${PIP[@]}" --platform manylinux_2_35_x86_64 nvidia-pytriton==0.7.0 -d "$P"
    "${PIP[@]}" --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1 -d "$P/whl"
    "${PIP[@]}" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        numpy==1.26.4 onnx==1.23.2 ml_dtypes==0.5.4 protobuf typing_extensions -d "$P/whl"
    PY=${PYTHON:-.venv/bin/python}
    "$PY" -c "from sketchkit.magenta_onnx import import_magenta; import_magenta('../shared/data/magenta-gen/owl.gen.json', '$W/owl', name='owl')"
    "$PY" -m sketchkit serve build-repo "$W/owl" --out "$W/repo" --flavor gpu --no-stateful --name owl
    "$PY" -m sketchkit serve build-repo "$W/owl" --out "$W/plain" --flavor gpu --no-stateful --name owlplain --no-engine-cuda-graphs
    cp -r "$W/repo/owl_generate" "$W/plain/owlplain_generate" "$P/repo/"
    git archive "${BASELINE:-b401ed7}" sketchkit | tar -x -C "$P/old"
    mkdir -p .gpu && tar -cf .gpu/payload.tar -C "$W" payload && rm -rf "$W"
    SUM=$(sha256sum .gpu/payload.tar | cut -d' ' -f1)
    TREE=$(($(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) >> 20))  # MiB that travel anyway
    SIZE=$((62 - TREE))  # MiB of payload per call, under the tool's 64 MiB with a margin
    split -b "${SIZE}M" -d -a 2 .gpu/payload.tar .gpu/payload.part.
    k=0
    for f in .gpu/payload.part.*; do k=$((k + 1)); mkdir -p ".gpu/p$k" && mv "$f" ".gpu/p$k/"; done
    echo "$SUM" > ".gpu/p$k/payload.sha256"
    rm .gpu/payload.tar
    du -sm .gpu/p[0-9]*
    echo "$k parts of ${SIZE} MiB (the checkout: ${TREE} MiB): calls part p1 .. p$k, then run"
    ;;
part)
    mkdir -p $G/parts && cp .gpu/"$2"/payload.* $G/parts/ && ls -la $G/parts
    ;;
run)
    : "${OUT:?set OUT}"
    exec > >(tee -a "$OUT/log.txt") 2>&1
    START=$(date +%s)
    say() { echo "[gpu_serve $(($(date +%s) - START))s] $*"; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    cat $G/parts/payload.part.* > $G/payload.tar
    [ "$(sha256sum $G/payload.tar | cut -d' ' -f1)" = "$(cat $G/parts/payload.sha256)" ] || { say "payload: sha256 mismatch"; exit 1; }
    tar -xf $G/payload.tar -C $G && rm $G/payload.tar
    D=$G/payload
    mkdir -p $G/pt && python3 -m zipfile -e $D/nvidia_pytriton-*.whl $G/pt  # pip refuses a renamed wheel; unzip drops the run bits
    chmod +x $G/pt/pytriton/tritonserver/bin/tritonserver $G/pt/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub
    SITE=/root/tv/lib/python3.12/site-packages
    python3 -m venv --without-pip /root/tv
    python3 -m pip install -q --no-deps --no-index --target $SITE $D/whl/*.whl || exit 1
    source benchmarks/gpu/package_tree.sh && package_tree $G/src  # sketchkit is not installed there
    echo $G/src > $SITE/sketchkit-src.pth
    NVLIBS=$(ls -d /opt/torch/.venv/lib/python3.12/site-packages/nvidia/*/lib | paste -sd:)
    export LD_LIBRARY_PATH=$NVLIBS PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1
    PY=/root/tv/bin/python
    $PY -c "import numpy, onnxruntime as o; print('server env: numpy', numpy.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"
    MODEL=$D/repo/owl_generate/1
    say "in process"
    timeout 240 $PY benchmarks/bench_gpu_serve.py inprocess "$MODEL" --old "$D/old" --old-label "b401ed7 (the draw before issue 27)" --json "$OUT/inprocess.json"
    say "tritonserver"
    BK=$G/bk/python && mkdir -p $BK
    PB=$G/pt/pytriton/tritonserver/backends/python
    cp $PB/libtriton_python.so $PB/triton_python_backend_utils.py $BK/
    ln -sf $G/pt/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub $BK/
    REPO=$D/repo
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
    echo "usage: bash benchmarks/gpu_serve.sh prepare|part pK|run" >&2
    exit 2
    ;;
esac
