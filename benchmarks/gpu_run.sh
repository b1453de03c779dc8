#!/usr/bin/env bash
# The one-shot GPU run of issue 11, from the repository root on a bare GPU machine (python3 with
# torch, numpy, safetensors, click, tqdm; no cairosvg, no platformdirs, sketchkit not installed):
#
#   OUT=/some/empty/dir PYTHONUNBUFFERED=1 bash benchmarks/gpu_run.sh
#
# 1. the machine and versions; 2. benchmarks/bench_train.py --device cuda (the layer-norm rows:
#    eager step loop, compiled step + graph (the previous fast path), fused loop, fused + compiled +
#    graph; then the HyperLSTM rows); 3. three sheep candidates trained at once on the one GPU, each
#    stopped by the same --time-limit: zoo/recipes/aaron_sheep_gpu_{lstm,layernorm,lstm256}.toml,
#    then each best checkpoint evaluated on the test split; meanwhile, on the CPU side,
#    benchmarks/gpu/hyper_diagnose.py (which op breaks the HyperLSTM capture) and, when
#    SKETCHKIT_GPU_ENGINE names an owl model, benchmarks/bench_engine.py (issue 9: the engine on
#    this machine's cores); 4. everything packed into 7 files directly under $OUT: log.txt (with
#    both bench tables), diag.txt (hyper_diagnose + engine), run_<name>.tar.gz for each candidate
#    (best.safetensors, metrics.jsonl, recipe.toml, eval_test.json, train.log, samples/, loss
#    picture; never last.safetensors), summary.json, bench.json (both bench tables' numbers).
# The whole run keeps to BUDGET seconds (default 550; TINY: 150). TINY=1 runs the same path on the CPU with
# tiny sizes and budgets (about two minutes): the dry run.
# Env: OUT (required), SKETCHKIT_GPU_DATA (default .gpu/aaron_sheep.npz), SKETCHKIT_GPU_ENGINE
# (an owl model directory for bench_engine.py; default .gpu/owl), SKETCHKIT_GPU_ENGINE_CODE (the
# checkout whose bench_engine.py and sketchkit/ to use; default .), BUDGET, TINY, PYTHON.
set -uo pipefail

START=$(date +%s)
TINY=${TINY:-0}
if [ "$TINY" = "1" ]; then BUDGET=${BUDGET:-150}; else BUDGET=${BUDGET:-550}; fi
PY=${PYTHON:-python3}
DATA=${SKETCHKIT_GPU_DATA:-.gpu/aaron_sheep.npz}
ENGINE_MODEL=${SKETCHKIT_GPU_ENGINE:-.gpu/owl}  # an exported/imported model directory (no onnx needed)
ENGINE_CODE=${SKETCHKIT_GPU_ENGINE_CODE:-.}  # a checkout whose benchmarks/bench_engine.py to run
CANDIDATES=(lstm layernorm lstm256)
source benchmarks/gpu/package_tree.sh && start_job gpu_run  # $WORK, the import tree, $OUT/log.txt, elapsed
say() { echo "[gpu_run $(elapsed)s] $*"; }

if [ "$TINY" = "1" ]; then
    DEVICE=cpu
    BENCH=(--device cpu --cpu-scale 32 --batch 4 --steps 1 --blocks 1 --threads 1 --baseline-ref "")
    BENCH_LIMIT=40
    HYPER_LIMIT=40
    SIZES=(--set dec_size=16 --set enc_size=8 --set z_size=8 --set num_mixture=3 --set batch_size=8
        --set max_seq_len=60 --set eval_every=6 --set log_every=2 --set num_samples=4 --threads 1)
else
    DEVICE=cuda
    BENCH=(--device cuda --batch 100 --steps 9 --blocks 3)
    BENCH_LIMIT=125
    HYPER_LIMIT=70
    SIZES=(--threads 4)
fi
# after the time limit: start-up before train() counts it (~10 s), the last validation, checkpoint
# and samples (~5 s on the GPU), the two evaluations at once (~15 s), packing (~5 s); generous
RESERVE=90
KILL_AFTER=45  # a training still running LIMIT + KILL_AFTER seconds after it started is killed

say "1. machine"
machine "$PY"
ls -l "$DATA" || { say "no data at $DATA (SKETCHKIT_GPU_DATA)"; exit 1; }
git log -1 --format='commit %H %s' 2>/dev/null || true

# two bench runs, each under its own limit, so a slow compile in one cannot lose the other's rows
# (on CUDA every row of a run is warmed up before any is timed); both include the fused LSTM 512
# that the ratios are taken against
say "2. benchmark: layer-norm rows (at most ${BENCH_LIMIT}s), then HyperLSTM rows (at most ${HYPER_LIMIT}s)"
timeout -k 10 "$BENCH_LIMIT" "$PY" benchmarks/bench_train.py "${BENCH[@]}" --data "$DATA" --out "$WORK/bench_ln" \
    --only "LSTM 256" --only "(cuDNN)" --only "layer-norm" --skip "float()" \
    || say "layer-norm benchmark exited with $? (its table holds the rows it finished)"
timeout -k 10 "$HYPER_LIMIT" "$PY" benchmarks/bench_train.py "${BENCH[@]}" --data "$DATA" --out "$WORK/bench_hyper" \
    --only "(cuDNN)" --only "HyperLSTM" \
    || say "HyperLSTM benchmark exited with $? (its table holds the rows it finished)"
for b in bench_ln bench_hyper; do [ -f "$WORK/$b.md" ] && { echo "== $b"; cat "$WORK/$b.md"; }; done  # into log.txt

LIMIT=$((BUDGET - $(elapsed) - RESERVE))
[ "$LIMIT" -lt 20 ] && LIMIT=20
say "3. training ${#CANDIDATES[@]} candidates at once, --time-limit ${LIMIT}s each"
declare -A PIDS
# the CPU-side diagnostics run beside the training (small GPU use; their own processes)
( timeout -k 5 200 "$PY" benchmarks/gpu/hyper_diagnose.py > "$WORK/diag_hyper.txt" 2>&1 ) &
DIAG_PID=$!
ENGINE_PID=""
if [ -e "$ENGINE_MODEL" ] && [ -f "$ENGINE_CODE/benchmarks/bench_engine.py" ]; then
    MODEL_ABS=$(realpath "$ENGINE_MODEL")
    ( cd "$ENGINE_CODE" && PYTHONPATH=. timeout -k 5 240 "$PY" benchmarks/bench_engine.py --model "$MODEL_ABS" \
        --threads 1 2 --workers 1 4 --no-write --json "$WORK/engine.json" > "$WORK/diag_engine.txt" 2>&1 ) &
    ENGINE_PID=$!
else
    say "no engine benchmark ($ENGINE_MODEL or benchmarks/bench_engine.py missing)"
fi
for name in "${CANDIDATES[@]}"; do
    mkdir -p "$WORK/$name"
    timeout -k 5 $((LIMIT + KILL_AFTER)) "$PY" -m sketchkit train "zoo/recipes/aaron_sheep_gpu_$name.toml" \
        --data "$DATA" --out "$WORK/$name" --device "$DEVICE" --time-limit "$LIMIT" --fresh --quiet "${SIZES[@]}" \
        > "$WORK/$name/train.log" 2>&1 &
    PIDS[$name]=$!
done
for name in "${CANDIDATES[@]}"; do
    wait "${PIDS[$name]}"
    say "train $name exited with $?"
    tail -n 5 "$WORK/$name/train.log"
done

say "evaluating each best checkpoint on the test split (both at once)"
EVALS=()
for name in "${CANDIDATES[@]}"; do
    if [ -f "$WORK/$name/best.safetensors" ]; then
        timeout -k 5 40 "$PY" -m sketchkit evaluate "$WORK/$name/best.safetensors" --split test --data "$DATA" --json \
            > "$WORK/$name/eval_test.json" 2> "$WORK/$name/eval_test.err" &
        EVALS+=($!)
    else
        say "$name has no best.safetensors"
    fi
done
for pid in "${EVALS[@]}"; do wait "$pid"; done  # by pid: a bare wait would also wait for the tee of the log
wait "$DIAG_PID"
[ -n "$ENGINE_PID" ] && wait "$ENGINE_PID"
for name in "${CANDIDATES[@]}"; do
    [ -f "$WORK/$name/eval_test.err" ] && cat "$WORK/$name/eval_test.err"
    [ -f "$WORK/$name/eval_test.json" ] && { echo "$name test:"; cat "$WORK/$name/eval_test.json"; }
done

say "4. packing"
"$PY" - "$WORK" "$OUT" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {}
for run in sorted(p for p in work.iterdir() if p.is_dir()):
    recs = []
    if (run / "metrics.jsonl").exists():
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in recs if r["split"] == "train"]
    valid = [r for r in recs if r["split"] == "valid"]
    ev = run / "eval_test.json"
    summary[run.name] = {
        "steps": train[-1]["step"] if train else 0,
        "minutes": (train[-1]["time"] - train[0]["time"]) / 60 if len(train) > 1 else None,
        "sketches_per_s_last": train[-1]["sketches_per_s"] if train else None,
        "best_valid": min(valid, key=lambda r: r["loss"]) if valid else None,
        "test": json.loads(ev.read_text()) if ev.exists() and ev.stat().st_size else None,
    }
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
bench = {b: json.loads((work / f"{b}.json").read_text()) for b in ("bench_ln", "bench_hyper") if (work / f"{b}.json").exists()}
if (work / "engine.json").exists():
    bench["engine"] = json.loads((work / "engine.json").read_text())
(out / "bench.json").write_text(json.dumps(bench, indent=2))
diag = [f"=== {p.name}\n{p.read_text()}" for p in (work / "diag_hyper.txt", work / "diag_engine.txt") if p.exists()]
(out / "diag.txt").write_text("\n".join(diag))
EOF
LIMIT_BYTES=$((16 * 1024 * 1024 - 65536))
for name in "${CANDIDATES[@]}"; do
    [ -d "$WORK/$name" ] || continue
    tar -czf "$OUT/run_$name.tar.gz" -C "$WORK" --exclude=last.safetensors "$name"
    if [ "$(stat -c %s "$OUT/run_$name.tar.gz")" -gt "$LIMIT_BYTES" ]; then
        say "run_$name.tar.gz too big: packing without samples/"
        tar -czf "$OUT/run_$name.tar.gz" -C "$WORK" --exclude=last.safetensors --exclude=samples "$name"
    fi
done
ls -l "$OUT"
say "done in $(elapsed)s (budget ${BUDGET}s)"
sleep 1  # let tee finish log.txt
