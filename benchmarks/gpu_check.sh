#!/usr/bin/env bash
# A short end-to-end study on a CUDA machine, so a team's first GPU run is a known quantity: synthetic scenes
# at the real study's 512 px, the cache (float16 features, attention maps), a dense probe, exit heads with
# fine-tuned blocks, the design comparison with latency measured on the GPU, and the report. Prints each
# stage's time (probe-kit run's own stage lines), the peak GPU memory (nvidia-smi, sampled every 0.5 s) and the
# cache size. About a few minutes on one GPU; CI never runs it (it has no GPU).
#
#   benchmarks/gpu_check.sh                       # the shipped reference model on cuda
#   MODEL=hustvl/yolos-small benchmarks/gpu_check.sh
#   DEVICE=cpu FRAMES=24 benchmarks/gpu_check.sh  # the same script, small, where there is no GPU
set -euo pipefail

MODEL=${MODEL:-reference}
DEVICE=${DEVICE:-cuda}
FRAMES=${FRAMES:-96}
OUT=${OUT:-$(mktemp -d)/gpu-check}
PROBE_KIT=${PROBE_KIT:-probe-kit}

mkdir -p "$(dirname "$OUT")"
config="$(dirname "$OUT")/gpu_check.yaml"
cat > "$config" <<EOF
name: gpu-check
synth: {frames: $FRAMES, seed: 3, size: 512, frames_per_sequence: $((FRAMES / 6))}
model: $MODEL
shortest_edge: 512
layers: "3,6,9,12"
tokens: [det, patch]
attention: true
batch_size: 8
device: $DEVICE
analyzers:
  lens: {}
  probe-dense: {epochs: 5}
exits:
  layers: "3,6,9"
  epochs: 5
  finetune_blocks: 1
  finetune_epochs: 1
  designs:
    heads: [det, dense]
    finetune_blocks: [0, 1]
    finetune_epochs: 1
    timing_images: 8
    timing_repeats: 9
EOF

peak_file="$(dirname "$OUT")/gpu_peak_mib"
echo 0 > "$peak_file"
sampler=""
if [[ "$DEVICE" == cuda* ]] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  (while true; do
     used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
     [[ "$used" -gt "$(cat "$peak_file")" ]] && echo "$used" > "$peak_file"
     sleep 0.5
   done) &
  sampler=$!
fi
trap '[[ -n "$sampler" ]] && kill "$sampler" 2> /dev/null || true' EXIT

start=$(date +%s)
$PROBE_KIT run "$config" --out "$OUT"
echo "gpu check: $(( $(date +%s) - start )) s wall on $DEVICE, peak GPU memory $(cat "$peak_file") MiB" \
     "(0 where not sampled), cache $(du -h "$OUT/cache.h5" | cut -f1), report $OUT/report.html"
