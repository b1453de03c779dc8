#!/usr/bin/env bash
# Issue 21 on one lent GPU: the best sheep in BUDGET seconds, from the repository root on a bare GPU
# machine (python3 with torch, numpy, safetensors, click, tqdm; no onnx, cairosvg, platformdirs;
# sketchkit not installed):
#
#   OUT=/some/empty/dir PYTHONUNBUFFERED=1 BUDGET=390 bash benchmarks/gpu_train.sh
#
# Data: `mkdir -p .gpu && cp ../shared/data/sketchrnn/aaron_sheep.npz .gpu/` (git-ignored; carry
# ".gpu" to the device machine). Give the device call a timeout some 30 s above BUDGET: the script
# itself ends within BUDGET. Dry run here: `OUT=/tmp/out TINY=1 PYTHON=.venv/bin/python bash
# benchmarks/gpu_train.sh` (about 100 s on 2 shared cores).
#
# 1. the machine and versions (and, with TORCHRUN_SMOKE=1, a ~20 s `torchrun --nproc-per-node=1`
#    NCCL run of a tiny model, issue 20);
# 2. probes: the CANDIDATES (zoo/recipes/aaron_sheep_gpu_<name>.toml, "gpu" = aaron_sheep_gpu.toml)
#    trained at the same time on the one GPU, each stopped by --time-limit PROBE; each one's last
#    validation (valid split) is its score: the lowest valid L_R wins;
# 3. the winner alone continues from its last.safetensors (an exact resume) for what the budget leaves;
# 4. its best.safetensors evaluated on the test split (L_R, L_s, L_p, L_KL);
# 5. at most 8 files directly under $OUT: log.txt (this output), summary.json (with the winner's
#    recipe), table.md (every candidate: budget, batch, schedule, cell -> valid L_R; test L_R for the
#    winner), best.safetensors (the winner's, float32 if under 16 MiB, else float16), runs.tar.gz
#    (every candidate's recipe.toml, metrics.jsonl, train.log, test evaluation and last samples; no
#    weights), the winner's resume state as last.safetensors.part1, part2, ... (under 16 MiB each;
#    `cat last.safetensors.part* > RUN/last.safetensors` continues the run in a later session), and
#    its train.log when a file is left.
# The whole run keeps to BUDGET seconds (default 390; TINY: 150), start-up and evaluation included:
# every phase runs under `timeout` with what is left. TINY=1 runs the same path on the CPU with tiny
# sizes (about two minutes): the dry run.
# Env: OUT (required), BUDGET, TINY, PROBE (probe seconds; default 80, TINY 15), CANDIDATES (default
# "gpu b256 b512 hyper"), SKETCHKIT_GPU_DATA (default .gpu/aaron_sheep.npz), TORCHRUN_SMOKE,
# PYTHON.
set -uo pipefail

START=$(date +%s)
TINY=${TINY:-0}
if [ "$TINY" = "1" ]; then BUDGET=${BUDGET:-150}; PROBE=${PROBE:-15}; else BUDGET=${BUDGET:-390}; PROBE=${PROBE:-80}; fi
PY=${PYTHON:-python3}
DATA=${SKETCHKIT_GPU_DATA:-.gpu/aaron_sheep.npz}
read -r -a CANDIDATES <<< "${CANDIDATES:-gpu b256 b512 hyper}"
source benchmarks/gpu/package_tree.sh && start_job gpu_train  # $WORK, the import tree, $OUT/log.txt, elapsed
left() { echo $((BUDGET - $(elapsed))); }
say() { echo "[gpu_train $(elapsed)s] $*"; }
recipe_of() { if [ "$1" = gpu ]; then echo zoo/recipes/aaron_sheep_gpu.toml; else echo "zoo/recipes/aaron_sheep_gpu_$1.toml"; fi; }

if [ "$TINY" = "1" ]; then
    DEVICE=cpu
    SIZES=(--set dec_size=16 --set enc_size=8 --set z_size=8 --set num_mixture=3 --set batch_size=8
        --set max_seq_len=60 --set eval_every=20 --set log_every=5 --set num_samples=4)
    HYPER_SIZES=(--set hyper_size=8 --set hyper_embed=4)
    PROBE_THREADS=1
    RUN_THREADS=1
    SMOKE_STEPS=10
    SMOKE_SIZES=("${SIZES[@]}")
    export PART_BYTES=${PART_BYTES:-40000}
else
    DEVICE=cuda
    SIZES=()
    HYPER_SIZES=()
    PROBE_THREADS=3
    RUN_THREADS=8
    SMOKE_STEPS=100
    SMOKE_SIZES=(--set dec_size=64 --set enc_size=32 --set batch_size=64)
fi
# what a training process needs beyond its --time-limit: start-up before train() (imports, data:
# ~10 s), the last validation, checkpoint and samples (~5 s); it is killed past this slack
SLACK=25
# kept for after the continuation: the test evaluation (~15 s) and packing (~5 s), with a margin
RESERVE=35

# train NAME LIMIT [--fresh]: one candidate in $WORK/NAME, its output appended to NAME/train.log
train() {
    local name=$1 limit=$2
    shift 2
    local extra=()
    grep -q '^cell = "hyper"' "$(recipe_of "$name")" && extra=("${HYPER_SIZES[@]}")
    mkdir -p "$WORK/$name"
    timeout -k 5 $((limit + SLACK)) "$PY" -m sketchkit train "$(recipe_of "$name")" --data "$DATA" \
        --out "$WORK/$name" --device "$DEVICE" --time-limit "$limit" --quiet "${SIZES[@]}" "${extra[@]}" "$@" \
        >> "$WORK/$name/train.log" 2>&1
}

say "1. machine (budget ${BUDGET}s, probes ${PROBE}s, candidates ${CANDIDATES[*]})"
machine "$PY"
ls -l "$DATA" || { say "no data at $DATA (SKETCHKIT_GPU_DATA)"; exit 1; }
for name in "${CANDIDATES[@]}"; do [ -f "$(recipe_of "$name")" ] || { say "no recipe $(recipe_of "$name")"; exit 1; }; done
git log -1 --format='commit %H %s' 2>/dev/null || true

if [ "${TORCHRUN_SMOKE:-0}" = "1" ]; then
    say "1b. torchrun --nproc-per-node=1 smoke run (tiny model, ${DEVICE}, at most 40 s)"
    timeout -k 5 40 "$PY" -m torch.distributed.run --standalone --nproc-per-node=1 -m sketchkit train \
        zoo/recipes/aaron_sheep_gpu.toml --data "$DATA" --out "$WORK/smoke" --device "$DEVICE" --quiet --fresh \
        "${SMOKE_SIZES[@]}" --set eval_every=50 --set log_every=10 --set num_samples=2 --steps "$SMOKE_STEPS" --threads "$RUN_THREADS"
    say "torchrun smoke exited with $?"
    [ -f "$WORK/smoke/metrics.jsonl" ] && tail -n 2 "$WORK/smoke/metrics.jsonl"
    rm -rf "$WORK/smoke"
fi

LIMIT=$PROBE
[ "$(($(left) - LIMIT - SLACK - RESERVE - 30))" -lt 0 ] && { say "budget too small for probes of ${PROBE}s"; exit 1; }
say "2. probes: ${#CANDIDATES[@]} candidates at once, --time-limit ${LIMIT}s each"
declare -A PIDS
for name in "${CANDIDATES[@]}"; do
    train "$name" "$LIMIT" --fresh --threads "$PROBE_THREADS" &
    PIDS[$name]=$!
done
for name in "${CANDIDATES[@]}"; do
    wait "${PIDS[$name]}"
    say "probe $name exited with $?: $(tail -n 1 "$WORK/$name/train.log")"
    [ -f "$WORK/$name/metrics.jsonl" ] && cp "$WORK/$name/metrics.jsonl" "$WORK/$name/probe.jsonl"  # the probe's lines
done

# the winner: the lowest valid L_R at its last validation (the state the continuation starts from)
WINNER=$("$PY" - "$WORK" "${CANDIDATES[@]}" <<'EOF'
import json, math, sys
from pathlib import Path
work, names = Path(sys.argv[1]), sys.argv[2:]
def last_valid(name):
    p = work / name / "metrics.jsonl"
    recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []
    valid = [r for r in recs if r["split"] == "valid"]
    return valid[-1]["lr"] if valid and (work / name / "last.safetensors").exists() else math.inf
scores = {n: last_valid(n) for n in names}
best = min(names, key=lambda n: scores[n])
print(best if math.isfinite(scores[best]) else "")
EOF
)
[ -n "$WINNER" ] || { say "no candidate finished a validation"; WINNER=none; }

CONT=$(($(left) - SLACK - RESERVE))
if [ "$WINNER" != none ] && [ "$CONT" -ge 10 ]; then
    say "3. $WINNER continues alone from its last.safetensors, --time-limit ${CONT}s"
    echo "=== continuation, --time-limit ${CONT}s" >> "$WORK/$WINNER/train.log"
    train "$WINNER" "$CONT" --threads "$RUN_THREADS"
    say "continuation exited with $?: $(tail -n 1 "$WORK/$WINNER/train.log")"
else
    say "3. no continuation (winner $WINNER, ${CONT}s left for it)"
fi

if [ -f "$WORK/$WINNER/best.safetensors" ]; then
    EVAL_LIMIT=$(($(left) - 12))
    [ "$EVAL_LIMIT" -gt 60 ] && EVAL_LIMIT=60
    say "4. $WINNER's best.safetensors on the test split (at most ${EVAL_LIMIT}s)"
    if [ "$EVAL_LIMIT" -ge 5 ]; then
        timeout -k 3 "$EVAL_LIMIT" "$PY" -m sketchkit evaluate "$WORK/$WINNER/best.safetensors" --split test \
            --data "$DATA" --json > "$WORK/$WINNER/eval_test.json" 2> "$WORK/$WINNER/eval_test.err"
        say "test evaluation exited with $?"
        cat "$WORK/$WINNER/eval_test.err" "$WORK/$WINNER/eval_test.json"
    fi
fi

say "5. packing"
timeout -k 2 $(($(left) > 8 ? $(left) - 2 : 6)) "$PY" - "$WORK" "$OUT" "$WINNER" "$PROBE" "$BUDGET" "${CANDIDATES[@]}" <<'EOF'
import json, os, shutil, sys, tarfile
from pathlib import Path
from sketchkit.zoo.config import Recipe

work, out, winner, probe_s, budget, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
MAX_BYTES = int(os.environ.get("PART_BYTES", 16 * 1024 * 1024 - 65536))  # TINY: small, to take the same paths

def records(name):
    p = work / name / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []

rows = {}
for name in names:
    run, recs = work / name, records(name)
    hp = Recipe.from_toml(run / "recipe.toml") if (run / "recipe.toml").exists() else None
    train = [r for r in recs if r["split"] == "train"]
    valid = [r for r in recs if r["split"] == "valid"]
    probe = [json.loads(x) for x in (run / "probe.jsonl").read_text().splitlines() if x.strip()] if (run / "probe.jsonl").exists() else []
    probe_valid = ([r for r in probe if r["split"] == "valid"] or [None])[-1]  # where the probe stopped
    ev = run / "eval_test.json"
    rows[name] = {
        "recipe": f"zoo/recipes/aaron_sheep_gpu{'' if name == 'gpu' else '_' + name}.toml",
        "cell": hp.dims.cell if hp else None,
        "dec_size": hp.dims.dec_size if hp else None,
        "batch_size": hp.batch_size if hp else None,
        "schedule": f"lr {hp.learning_rate:g} x {hp.learning_rate_decay:g}^step, R {hp.kl_decay:g}" if hp else None,
        "probe_s": probe_s,
        "probe_valid": probe_valid,
        "steps": train[-1]["step"] if train else 0,
        "sketches_per_s_last": train[-1]["sketches_per_s"] if train else None,
        "best_valid": min(valid, key=lambda r: r["loss"]) if valid else None,
        "minutes_training": (train[-1]["time"] - train[0]["time"]) / 60 if len(train) > 1 else None,
        "test": json.loads(ev.read_text()) if ev.exists() and ev.stat().st_size else None,
    }
summary = {"budget_s": budget, "probe_s": probe_s, "winner": winner, "candidates": rows}
if (work / winner / "recipe.toml").exists():
    summary["winner_recipe_toml"] = (work / winner / "recipe.toml").read_text()
(out / "summary.json").write_text(json.dumps(summary, indent=2))

def f(x, key):
    return f"{x[key]:.4f}" if x and x.get(key) is not None else "-"
lines = [
    f"Probes of {probe_s} s each, all candidates at once on one GPU; the winner (lowest valid L_R at the end "
    f"of its probe) then trained alone from its last checkpoint; total budget {budget} s.", "",
    "| candidate | cell | batch | schedule | probe steps | valid L_R after probe | valid L_KL | final steps | best valid L_R | test L_R | test L_s | test L_p | test L_KL |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for name, r in rows.items():
    pv, bv, t = r["probe_valid"], r["best_valid"], r["test"]
    lines.append(
        f"| {name}{' (winner)' if name == winner else ''} | {r['cell']} {r['dec_size']} | {r['batch_size']} | {r['schedule']} "
        f"| {pv['step'] if pv else '-'} | {f(pv, 'lr')} | {f(pv, 'kl')} | {r['steps']} | {f(bv, 'lr')} "
        f"| {f(t, 'lr')} | {f(t, 'ls')} | {f(t, 'lp')} | {f(t, 'kl')} |"
    )
(out / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

files = 4  # log.txt, summary.json, table.md, runs.tar.gz
if winner in rows:
    run = work / winner
    best = run / "best.safetensors"
    if best.exists():
        files += 1
        if best.stat().st_size <= MAX_BYTES:
            shutil.copyfile(best, out / "best.safetensors")
        else:  # float16 halves it (the loader casts back)
            import torch
            from sketchkit.zoo import checkpoint
            model, hp, meta = checkpoint.load(best)
            meta = {k: v for k, v in meta.items() if k not in ("dims", "recipe", "dtype", "format", "version")}
            checkpoint.save(out / "best.safetensors", model, hp, meta, dtype=torch.float16)
    # the resume state, so a later session can continue the run: in parts of under 16 MiB
    # (cat last.safetensors.part* > last.safetensors; its checksum verifies the join)
    last = run / "last.safetensors"
    if last.exists():
        raw = last.read_bytes()
        parts = [raw[i : i + MAX_BYTES] for i in range(0, len(raw), MAX_BYTES)]
        if files + len(parts) <= 8:
            for i, part in enumerate(parts, 1):
                (out / f"last.safetensors.part{i}").write_bytes(part)
            files += len(parts)
        else:
            print(f"last.safetensors ({len(raw)} bytes) does not fit in the files left: not returned")
    if files < 8 and (run / "train.log").exists():
        shutil.copyfile(run / "train.log", out / "train.log")
with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
    for name in names:
        run = work / name
        for p in sorted(run.glob("*")):
            if p.is_file() and p.suffix != ".safetensors":
                tar.add(p, f"{name}/{p.name}")
        for p in sorted((run / "samples").glob("step_*"))[-2:]:  # the last two pictures
            tar.add(p, f"{name}/samples/{p.name}")
for p in out.iterdir():
    if p.stat().st_size > 16 * 1024 * 1024 - 4096:
        print(f"{p.name} is over 16 MiB: removed")
        p.unlink()
EOF
say "packing exited with $?"
if [ "$TINY" = "1" ] && ls "$OUT"/last.safetensors.part* > /dev/null 2>&1; then  # the dry run checks the join
    cat "$OUT"/last.safetensors.part* > "$WORK/joined.safetensors"
    "$PY" -c "import sys; from sketchkit.zoo import checkpoint; print('joined parts: step', checkpoint.read_tensors(sys.argv[1])[1]['step'])" "$WORK/joined.safetensors"
fi
ls -l "$OUT"
say "done in $(elapsed)s (budget ${BUDGET}s)"
sleep 1  # let tee finish log.txt
