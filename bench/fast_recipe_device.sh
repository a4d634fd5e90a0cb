#!/usr/bin/env bash
# The fast-recipe reference runs (issue 16) on a machine given a copy of the working tree: a GPU
# machine lent through the workplace's device tool, which reaches no network and has torch but
# not every dependency of the package.
#
#   python tools/pack_imagenette.py ../shared/data/imagenette2-160 .gpudata --zip   # once, here (~51 MB)
#   mkdir -p .gpupack && mv .gpudata/imagenette2-160.zip .gpupack/ && cp .gpudata/PACKED.json .gpupack/
#   OUT=/some/dir IMAGENET_BOOK_COMMIT=$(git rev-parse HEAD) bash bench/fast_recipe_device.sh
#
# EXPERIMENTS names the reference experiments to run, in order (default: fast-recipe; the search
# is fast-recipe-search).
# It uses: .gpupack/imagenette2-160.zip (the packed Imagenette, extracted to /tmp/gpudata; else the
# folder .gpudata/ itself), .whl/*.whl (packages the machine lacks, installed into
# /tmp/site), and, if present, .gpuruns/ (the finished runs of an earlier call that was cut off, so
# that it resumes). It writes into $OUT: <experiment>.json (each result), log.txt, device.txt and
# runs.tgz (every finished run: carry it back as .gpuruns to resume), then input-pipeline.{txt,json}
# (bench/input_pipeline.py on the same data, at most INPUT_BENCH_S seconds; 0 skips it). BUDGET_S bounds the run; the
# files are written either way. The same script runs on a CPU (IMAGENET_BOOK_DEVICE=cpu), where
# the 5-epoch runs take hours: give it a small BUDGET_S to check the plumbing.
set -u
: "${OUT:?set OUT to the folder the results go to}"
BUDGET_S=${BUDGET_S:-400}
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export IMAGENET_BOOK_PROFILE=full IMAGENET_BOOK_DATA="$ROOT/.gpudata"
if [ -f .gpupack/imagenette2-160.zip ]; then
  $PY -m zipfile -e .gpupack/imagenette2-160.zip /tmp/gpudata && cp .gpupack/PACKED.json /tmp/gpudata/ \
    && export IMAGENET_BOOK_DATA=/tmp/gpudata
fi
export IMAGENET_BOOK_CACHE=${IMAGENET_BOOK_CACHE:-/tmp/ibcache}
EXPERIMENTS=${EXPERIMENTS:-fast-recipe}
runs="$IMAGENET_BOOK_CACHE/reference"
mkdir -p "$runs" "$OUT"
if [ -d .gpuruns ]; then cp -r .gpuruns/. "$runs/"; fi
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0)); print('cpus', __import__('os').cpu_count())"
  cat "$IMAGENET_BOOK_DATA/PACKED.json" 2>/dev/null
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
t0=$(date +%s.%N)
# shellcheck disable=SC2086  # EXPERIMENTS is a list of names
timeout "$BUDGET_S" $PY -m imagenet_book reference $EXPERIMENTS --out "$OUT" --no-progress 2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
echo "exit $rc after $($PY -c "import time; print(round(time.time() - $t0, 1))") s (process start to end, imports included)" \
  | tee -a "$OUT/log.txt"
(cd "$runs" && find . -name '*.json' | tar czf "$OUT/runs.tgz" -T -)
# Then, bounded by INPUT_BENCH_S: the input pipelines on this machine (textbook loader vs the fast loader).
if [ "${INPUT_BENCH_S:-90}" -gt 0 ]; then
  timeout "${INPUT_BENCH_S:-90}" $PY bench/input_pipeline.py --img-size 128 --batch-size 64 --seconds 3 --repeats 2 \
    --json "$OUT/input-pipeline.json" 2>&1 | tee "$OUT/input-pipeline.txt"
fi
exit "$rc"
