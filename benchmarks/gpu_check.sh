#!/usr/bin/env bash
# The GPU check, run ON a lent GPU machine from the repository root (benchmarks/README.md, "GPU"):
#   bash benchmarks/gpu_wheels.sh      # here: .whl/ (Python 3.12 wheels) and .gpudata/omniglot, git-ignored
#   device run: bash benchmarks/gpu_check.sh   carry [".whl", ".gpudata"]   timeout_s 540
# The tracked tree must stay under the 64 MiB a call carries with the wheels (about 47 MB): move
# models/clip_weights and benchmarks/results aside for the call (nothing here reads them).
# Installs the carried wheels and the project, then (each step time-boxed, most important first):
# the cuda-marked tests; GRAM's regulator cost per prompt step (cuda fp32/bf16, cpu); exact
# retrieval on cuda and cpu; runner vs plain loop per epoch on cuda and cpu; one Omniglot FSCIL
# seed of prototype / fscl / raml on cuda; the main job (digits) on cuda and cpu.
# Everything lands in $OUT/gpu_check.tar (re-packed after every step) and $OUT/steps.log.
# GPU_DEVICE=cpu QUICK=1 GPU_DATA=../shared/data dry-runs it on a machine without a GPU, in the
# active environment and with tiny settings (about 3 minutes; a slow test does this); there the bf16 regulator
# step runs only on a CPU with native bf16 (avx512_bf16/amx_bf16), a recorded skip otherwise. Results go
# to GPU_CHECK_DIR (default /tmp/gpu_check, which must be empty). Exit status: failed steps.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; R=${GPU_CHECK_DIR:-/tmp/gpu_check}; DATA=${GPU_DATA:-.gpudata}; DEV=${GPU_DEVICE:-cuda}
if [ -d "$R" ] && [ -n "$(ls -A "$R")" ]; then echo "gpu_check: $R is not empty (GPU_CHECK_DIR)"; exit 2; fi
mkdir -p "$OUT" "$R"
FAILED=0
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true
step() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.log"; }
pack() { tar cf "$OUT/gpu_check.tar" --exclude=checkpoints -C "$R" . ; }
run() {  # run <seconds> <log name> <command...>: time-boxed, logged, packed
    local t=$1 name=$2; shift 2
    step "$name: $*"
    local s=$SECONDS
    timeout "$t" "$@" > "$R/$name.log" 2>&1; local rc=$?
    [ $rc = 0 ] || FAILED=$((FAILED + 1))
    step "$name: rc=$rc in $((SECONDS - s)) s"; tail -4 "$R/$name.log" | tee -a "$OUT/steps.log"
    pack
}

if [ -d .whl ] && [ -z "${QUICK:-}" ]; then  # a dry run uses the active environment
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/proj . || exit 1
    export PYTHONPATH=/tmp/proj:$PYTHONPATH PATH=/tmp/proj/bin:$PATH
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; lscpu | grep "Model name"; nproc
  python3 -c "import sys, torch, avalanche, open_clip, faiss, avalanche_fscl; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'avalanche', avalanche.__version__, 'open_clip', open_clip.__version__, 'faiss', faiss.__version__)" || exit 1
} 2>&1 | tee "$R/env.txt" | tee -a "$OUT/steps.log"
grep -q "True" "$R/env.txt" || [ "$DEV" = cpu ] || { echo "no CUDA"; exit 1; }
pack

if [ -n "${QUICK:-}" ]; then STEPS=5; SIZES="2000"; EPOCHS=1; REPEATS=1
    SET=(--set stream.args.sessions=2 --set stream.args.base_classes=100 --set train.base_epochs=1
         --set strategy_args.raml.meta_episodes=5 --set strategy_args.fscl.meta_episodes=5)
else STEPS=40; SIZES="100000 1000000"; EPOCHS=2; REPEATS=2; SET=(); fi
DEVICES=("$DEV"); [ "$DEV" = cpu ] || DEVICES+=(cpu)  # the CPU reference rows, same call
NT=$(nproc)
M=avalanche_fscl.benchmarks
run 150 cuda_tests python3 -m pytest -q -m cuda -rs -p no:cacheprovider tests/
# bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16) is emulated, >10x slower: the dry run records a skip
CPU_BF16=1; grep -q -w -E "avx512_bf16|amx_bf16" /proc/cpuinfo 2>/dev/null || CPU_BF16=
for ac in none bf16; do
    a=(); [ $ac = bf16 ] && a=(--autocast bf16)
    if [ $ac = bf16 ] && [ "$DEV" = cpu ] && [ -z "$CPU_BF16" ]; then
        step "regulator_cost_cpu_bf16: skipped (this CPU has no native bf16: no avx512_bf16/amx_bf16 in /proc/cpuinfo)"
        echo "no native bf16 on this CPU" > "$R/regulator_cost_cpu_bf16.skipped"; pack; continue
    fi
    run 60 "regulator_cost_${DEV}_$ac" python3 -m $M.regulator_cost --clip-checkpoint none --steps $STEPS --device "$DEV" "${a[@]}" --out "$R/regulator_cost_${DEV}_$ac.json"
done
[ "$DEV" = cpu ] || run 60 regulator_cost_cpu_none python3 -m $M.regulator_cost --clip-checkpoint none --steps $STEPS --threads "$NT" --out "$R/regulator_cost_cpu_none.json"
for d in "${DEVICES[@]}"; do
    run 90 "retrieval_exact_$d" python3 -m $M.retrieval_speed --sizes $SIZES --backends exact --device "$d" --threads "$NT" --out "$R/retrieval_exact_$d"
done
for d in "${DEVICES[@]}"; do
    run 90 "overhead_$d" python3 -m $M.overhead --stream omniglot_fscil --data-root "$DATA" --epochs $EPOCHS --repeats $REPEATS --device "$d" --output "$R/overhead_$d.json"
done  # and the per-sample path on the device, for the materialised sessions' gain there:
run 90 "overhead_${DEV}_per_sample" python3 -m $M.overhead --stream omniglot_fscil --data-root "$DATA" --epochs $EPOCHS --repeats $REPEATS --device "$DEV" --materialize-mb 0 --output "$R/overhead_${DEV}_per_sample.json"
run 240 "omniglot_$DEV" avalanche-fscl run --config omniglot_fscil --strategy prototype --strategy fscl --strategy raml --seeds 0 \
    --device "$DEV" --data-root "$DATA" --base-cache off --no-progress --output "$R/omniglot_$DEV" "${SET[@]}"
# train.autocast auto on the device: the probe's fp32/bf16/fp16 step times (run.json) and prototype's
# base-session time and accuracy, against the fp32 prototype row above
run 120 "omniglot_${DEV}_autocast" avalanche-fscl run --config omniglot_fscil --strategy prototype --seeds 0 --set train.autocast=auto \
    --device "$DEV" --data-root "$DATA" --base-cache off --no-progress --output "$R/omniglot_${DEV}_autocast" "${SET[@]}"
for d in "${DEVICES[@]}"; do
    run 90 "digits_$d" avalanche-fscl run --device "$d" --base-cache off --no-progress --output "$R/digits_$d"
done
step "done: $FAILED failed step(s)"
exit $((FAILED > 0))
