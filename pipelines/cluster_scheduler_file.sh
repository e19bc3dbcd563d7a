#!/usr/bin/env bash
# A plain Dask cluster from a scheduler file, then `tilesegment run --scheduler FILE`.
#
#   INPUT=slide.svs OUTPUT=slide-mask.zarr SCHEDULER_FILE=$HOME/dask-scheduler.json \
#       bash pipelines/cluster_scheduler_file.sh
#
# The scheduler writes its address into $SCHEDULER_FILE; each worker (one per GPU: start
# this script's worker line once per GPU, e.g. on several nodes sharing $SCHEDULER_FILE,
# with CUDA_VISIBLE_DEVICES=<its GPU>) reads it. --host names the address they listen
# on: 127.0.0.1 keeps everything on this machine; on several nodes give the node's own
# address on the cluster network (never 0.0.0.0 on a shared network: anyone who reaches the
# port can run code as you; see docs/cluster.md for TLS). No dashboard unless you add one.
#
# tests/test_pipelines_cluster.py parses every command below (and tests/test_tcp_cluster.py
# runs the same commands) so this recipe cannot rot.
set -euo pipefail

: "${INPUT:?set INPUT to the raster to segment}"
: "${OUTPUT:?set OUTPUT to the mask to write (.zarr or .tif)}"
SCHEDULER_FILE="${SCHEDULER_FILE:-$PWD/dask-scheduler.json}"
HOST="${HOST:-127.0.0.1}"

dask scheduler --scheduler-file "$SCHEDULER_FILE" --host "$HOST" --no-dashboard &
SCHEDULER=$!
trap 'kill $(jobs -p) 2>/dev/null' EXIT

until [ -f "$SCHEDULER_FILE" ]; do sleep 1; done

TILESEGMENT_DEVICE=cuda:0 dask worker --scheduler-file "$SCHEDULER_FILE" --nworkers 1 --nthreads 2 --host "$HOST" --no-dashboard &

tilesegment run "$INPUT" -o "$OUTPUT" --scheduler "$SCHEDULER_FILE" --model nuclei --batch-size 16 --no-progress

kill "$SCHEDULER"
