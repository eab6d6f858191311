# The GPU figures of docs/benchmarks.md, measured in one go on one CUDA card, from the repository root.
# Usage: bash scripts/gpu_figures.sh OUTDIR   (PYTHONPATH=src when vaelab is not installed)
# Writes each benchmark's output to OUTDIR; each part has a time limit so that one slow part
# cannot take the others' time. Total: about 10 minutes on an H100.
set -u -o pipefail
OUTDIR=$(realpath -m "${1:?usage: bash scripts/gpu_figures.sh OUTDIR}")
KEEP=${TMPDIR:-/tmp}/vaelab-gpu-runs
mkdir -p "$OUTDIR" && rm -rf "$KEEP"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } | tee "$OUTDIR/gpu.txt"
cd benchmarks || exit 1
# trainer against the bare loop (issue target: at least 0.9x in every case)
timeout 130 python3 train_throughput.py --quick --device cuda 2>&1 | tee "$OUTDIR/train_throughput.txt"
# fp32 eager / bf16 / bf16 + compile, conv VAE at 28 px and 64 px RGB
timeout 180 python3 scaling.py --device cuda --repeats 2 2>&1 | tee "$OUTDIR/scaling.txt"
# the default VAE on shapes at 128 px, then at 64 px with more epochs than 2 CPU cores allow
timeout 180 python3 shapes.py quality --device cuda --image-size 128 --set epochs=20 --keep "$KEEP/128" \
    2>&1 | tee "$OUTDIR/shapes128.txt"
cp "$KEEP/128/shapes-quality/metrics.jsonl" "$OUTDIR/shapes128_metrics.jsonl" 2>/dev/null
timeout 90 python3 shapes.py quality --device cuda --image-size 64 --set epochs=30 --keep "$KEEP/64" \
    2>&1 | tee "$OUTDIR/shapes64.txt"
cp "$KEEP/64/shapes-quality/metrics.jsonl" "$OUTDIR/shapes64_metrics.jsonl" 2>/dev/null
echo "figures in $OUTDIR"
