#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one prepared call (DEVELOPERS.md, "A lent GPU").
#
# 1. reglab's gpu preset against airbench94 on the same tensors (bench/gpu_compare.py, medians of
#    5 runs each and their time ratio), with the GPU's name, and 5 runs of the gpu94 preset
#    (airbench94_muon's recipe) against the same;
# 2. torchrun DDP on CUDA with every visible GPU, against the same preset in one process;
# 3. the tutorial's three runs (λ acting as 0, l2-half 1e-4 and 1e-3; 20,000 steps, fp32 as the
#    tutorial ran) side by side on the GPU, their compact records exported under $OUT/results.
# A short table is printed last; logs and records are written under $OUT.
#
# On the device machine, after carrying the data in three calls (.data/c1, .data/c2, then
# .data/c3 with this call) and the airbench wheel in .whl/:
#     bash bench/gpu_session.sh
# A CPU dry run with tiny sizes, to try the script first:
#     TINY=1 DATA=../shared/cifar10 OUT=/tmp/gpu-dry bash bench/gpu_session.sh
set -u
OUT=${OUT:-out/gpu-session}
mkdir -p "$OUT/logs"
if [ -d .data/c1 ]; then  # the carried pieces, into one folder
    mkdir -p .data/cifar10 && mv .data/c?/* .data/cifar10/ && rmdir .data/c?
fi
DATA=${DATA:-.data/cifar10}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
for wheel in .whl/*.whl; do  # pure-Python wheels import from the zip itself
    [ -f "$wheel" ] && PYTHONPATH=$PYTHONPATH:$wheel
done
START=$(date +%s)
BUDGET=${BUDGET:-560}  # seconds this call may use in all
RUNS=/tmp/reglab-gpu-runs
rm -rf "$RUNS" && mkdir -p "$RUNS"

if [ -n "${TINY:-}" ]; then
    COMPARE=(--tiny --runs 1 --skip-airbench)
    SHORT=(--train-limit 512 --holdout 256 --steps 20 --log-every 5 --val-every 10
           --checkpoint-every 10 --threads 1)
    DDP_SHORT=(--train-limit 2048 --holdout 256 --epochs 1 --threads 1)
    NPROC=2
else
    COMPARE=(--runs 5 --also gpu94)
    SHORT=(--holdout 10000)
    DDP_SHORT=(--holdout 10000)
    NPROC=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi

PARTS=${PARTS:-123}  # which of the three parts to run
if [[ $PARTS == *1* ]]; then
echo "== 1. gpu preset against airbench94"
python3 bench/gpu_compare.py --data-dir "$DATA" --out "$OUT" "${COMPARE[@]}" \
    > "$OUT/logs/gpu_compare.txt" 2>&1 || echo "gpu_compare failed: see $OUT/logs/gpu_compare.txt"
fi

if [[ $PARTS == *2* ]]; then
echo "== 2. torchrun DDP, $NPROC process(es) (global batch $NPROC x the preset's), against one"
python3 -m reglab train --preset gpu --data-dir "$DATA" "${DDP_SHORT[@]}" --no-tensorboard \
    --runs-dir "$RUNS" --name single > "$OUT/logs/single.txt" 2>&1
python3 -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m reglab train \
    --preset gpu --data-dir "$DATA" "${DDP_SHORT[@]}" --no-tensorboard --runs-dir "$RUNS" \
    --name "ddp$NPROC" > "$OUT/logs/ddp.txt" 2>&1
fi

if [[ $PARTS == *3* ]]; then
echo "== 3. the tutorial's runs, side by side"
LEFT=$(( BUDGET - ($(date +%s) - START) - 30 ))
if (( LEFT < 60 )); then LEFT=60; fi
declare -A EXTRA=([tutorial-as-run]="--no-penalty-in-loss" [tutorial-l2half-1e-4]=""
                  [tutorial-l2half-1e-3]="--reg l2-half=1e-3")
for name in "${!EXTRA[@]}"; do
    # shellcheck disable=SC2086  # EXTRA holds whole flags
    timeout "$LEFT" python3 -m reglab train --preset tutorial --precision fp32 --data-dir "$DATA" \
        "${SHORT[@]}" ${EXTRA[$name]} --no-tensorboard --runs-dir "$RUNS" --name "$name" \
        > "$OUT/logs/$name.txt" 2>&1 &
done
wait
for name in "${!EXTRA[@]}"; do
    python3 -m reglab export "$RUNS/$name" --compact-to "$OUT/results/tutorial" > /dev/null 2>&1
done
fi

echo
echo "== summary ($(python3 -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"))"
sed -n '/^| trainer/,$p' "$OUT/logs/gpu_compare.txt" 2>/dev/null
for log in single ddp tutorial-as-run tutorial-l2half-1e-4 tutorial-l2half-1e-3; do
    [ -f "$OUT/logs/$log.txt" ] || continue
    echo "$log: $(grep -h '^\[summary\]: [0-9]' "$OUT/logs/$log.txt" | tail -n 1 || true)"
    grep -h '^\[time\]' "$OUT/logs/$log.txt" | head -n 1
done
echo "elapsed $(( $(date +%s) - START )) s"
