#!/usr/bin/env bash
# Pipeline efficiency on a GPU: the worker through a real Kafka broker over the bare model,
# at the default bundle's sizes and at the paper's (ViT-L/14-336 + LLaVA-1.5-7B-shaped head).
# For a bare lent GPU machine, which has PyTorch but no Java, Kafka or our Kafka/pydantic
# packages: build the kit here first (`.venv/bin/python bench/device_kit.py`), carry
# `.device-kit` with the working tree, and run this there:
#   bash bench/gpu-pipeline.sh      -> bench/results/inference_worker_gpu_{compact,llava}.json
# (and copies in $OUT when it is set). About 4 minutes. On a machine with Java and the venv
# (KIT=none), it uses those instead.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-.device-kit}
WORK=${WORK:-/tmp/patchsight-gpu}
PY=${PYTHON:-python3}
export PATCHSIGHT_HOME=$WORK/home HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$PATCHSIGHT_HOME/kafka"
if [ "$KIT" != none ]; then
  [ -f "$KIT/jre.tar.xz" ] || { echo "no kit in $KIT: run bench/device_kit.py where pip and Maven answer" >&2; exit 2; }
  tar -C "$WORK" -xJf "$KIT/jre.tar.xz"
  tar -C "$WORK" -xJf "$KIT/kafka.tar.xz"
  export PATH=$WORK/jre/bin:$PATH PATCHSIGHT_CACHE=$(cd "$KIT" && pwd)/cache
  if ! "$PY" -c 'import kafka, pydantic, structlog' 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$KIT"/wheels/*.whl
    export PYTHONPATH=$WORK/site
  fi
  # The broker's classpath, as `patchsight infra up` would have cached it after Maven.
  ls "$WORK"/kafka/*.jar | paste -sd: > "$PATCHSIGHT_HOME/kafka/classpath.txt"
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
java -version 2>&1 | head -1
export KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP:-127.0.0.1:9092}
"$PY" -c 'import os; from patchsight import infra; from schemas.config import KafkaSettings
print(infra.kafka_up(KafkaSettings(bootstrap=os.environ["KAFKA_BOOTSTRAP"])))'
trap '"$PY" -c "from patchsight import infra; infra.kafka_down()" || true' EXIT
device=cuda
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || device=cpu
if [ "$device" = cpu ]; then
  echo "no CUDA GPU: checking the path with the compact size on CPU" >&2
  timeout 300 "$PY" bench/inference_worker.py --only efficiency --size compact --device cpu --threads 1 --pairs 1 --frames 240 \
    --out "$WORK/cpu-check.json"
  exit 0
fi
# Each ratio pairs a worker pass with a bare-model pass, as on the CPU (BENCHMARKS.md).
# Each result is copied out as soon as it exists, so that a run cut short by the lease keeps it.
keep() { [ -z "${OUT:-}" ] || cp "bench/results/inference_worker_gpu_$1.json" "$OUT"/ || true; }
status=0
timeout 150 "$PY" bench/inference_worker.py --only efficiency --size compact --device cuda --threads 4 --pairs 3 \
  --frames 1920 || status=$?
keep compact
timeout 240 "$PY" bench/inference_worker.py --only efficiency --size llava --device cuda --threads 4 --pairs 3 \
  --frames 480 || status=$?
keep llava
[ -z "${OUT:-}" ] || tail -c 1000000 "$PATCHSIGHT_HOME/kafka/broker.log" > "$OUT/broker.log" || true
exit $status
