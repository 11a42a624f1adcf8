#!/usr/bin/env bash
# NFNet-F0 training and eval speed on one NVIDIA GPU, with timm's dm_nfnet_f0 as the peer.
#
#   OUT=/tmp/gpu_bench bash benchmarks/gpu_benchmark.sh
#
# In order, each step bounded in time so that a slow one cannot starve the rest (STEPS picks
# some, e.g. STEPS="3 4"; on an H200 steps 1-2 took 4.5 min, mostly compiling. Step 3's
# probes took 50 + 47 s there, and compiling and running the planned batch 2336 did not end
# within 5.5 min with cuDNN autotuning, nor within 160 s without it):
#   1. nfnets (benchmarks.train_step): bf16 training step at the paper's per-device batch 32
#      (192 px) and eval at 256 px, then the same for the BatchNorm twin (the WS/BN ratio);
#   2. timm dm_nfnet_f0, bf16 autocast, channels-last, same batch and resolutions;
#   3. nfnets at the largest batch that fits (XLA's memory plan at two batches, then run;
#      LARGEST=N runs batch N without the plan);
#   4. timm at that batch.
# Logs go to $OUT. Wheels in .whl/ (dm-haiku, jmp, ml_collections for an image that has jax
# but not them) are installed to /tmp/site first. Needs jax with CUDA; step 2 needs torch+timm.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_benchmark}
MODEL=${MODEL:-nfnet_f0}
BATCH=${BATCH:-32}
PYTHON=${PYTHON:-python3}
TORCH_PYTHON=${TORCH_PYTHON:-$PYTHON}
EXTRA=${EXTRA:-}            # more benchmarks.train_step flags (--width=0.125 for a smoke run)
TIMM_EXTRA=${TIMM_EXTRA:-}  # more benchmarks/timm_peer.py flags
# Steps 3-4 run batches of a thousand or more: fewer timed steps keep them inside the lease.
BIG_STEPS=${BIG_STEPS:-5}
BIG_REPEATS=${BIG_REPEATS:-2}
MAX_BATCH_TIMEOUT=${MAX_BATCH_TIMEOUT:-540}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# The allocator may take 95% of the card (JAX's default is 75%); compiled programs are cached
# on disk so that a rerun on the same machine reuses them (the memory probes compile without
# autotuning, so they do not share the timed steps' entries).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/nfnets_jax_cache}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  2>&1 | tee "$OUT/gpu.txt"
"$PYTHON" -c "import jax, haiku, optax, nfnets; print('jax', jax.__version__, jax.devices())" \
  2>&1 | tee "$OUT/versions.txt" || exit 1

bench=("$PYTHON" -m benchmarks.train_step --model="$MODEL" --dtype=bfloat16 --steps=20
       --repeats=3 $EXTRA)
timm_bench=("$TORCH_PYTHON" benchmarks/timm_peer.py --model="dm_$MODEL" --dtype=bfloat16
            --channels_last --steps=20 --repeats=3 --device="${TORCH_DEVICE:-cuda}" $TIMM_EXTRA)

STEPS=${STEPS:-1 2 3 4}
step() { [[ " $STEPS " == *" $1 "* ]]; }
if step 1; then
  timeout 240 "${bench[@]}" --batch_size="$BATCH" 2>&1 | tee "$OUT/nfnets_batch$BATCH.log"
fi
if step 2; then
  timeout 90 "${timm_bench[@]}" --batch_size="$BATCH" 2>&1 | tee "$OUT/timm_batch$BATCH.log"
fi
# LARGEST=N skips the memory probes of step 3 (two compilations, about 50 s each on an H200)
# and times batch N: on an H200, F0 at 192 px plans 0.91 GiB + 57.7 MiB per image, so about
# 2216 within the 95% of the allocator limit that --max_batch plans to.
LARGEST=${LARGEST:-}
big_train=(timeout "$MAX_BATCH_TIMEOUT" "${bench[@]}" --compare_bn=false --eval=false
           --steps="$BIG_STEPS" --repeats="$BIG_REPEATS")
if step 3 && [ -n "$LARGEST" ]; then
  "${big_train[@]}" --batch_size="$LARGEST" 2>&1 | tee "$OUT/nfnets_batch$LARGEST.log"
elif step 3; then
  "${big_train[@]}" --max_batch --train=false 2>&1 | tee "$OUT/nfnets_max_batch.log"
fi
largest=${LARGEST:-$(grep -so 'largest batch [0-9]*' "$OUT/nfnets_max_batch.log" \
  | grep -o '[0-9]*$')}
if step 4 && [ -n "$largest" ]; then
  timeout 120 "${timm_bench[@]}" --batch_size="$largest" --no_eval --steps="$BIG_STEPS" \
    --repeats="$BIG_REPEATS" 2>&1 \
    | tee "$OUT/timm_batch$largest.log"
fi
echo "== summary"
grep -h "img/s\|ratio\|/ nfnet\|largest batch\|peak" "$OUT"/*.log
