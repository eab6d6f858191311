# The GPU figures of docs/benchmarks.md, measured in one go on one CUDA card, from the repository root.
# Usage: bash scripts/gpu_figures.sh OUTDIR   (PYTHONPATH=src when vaelab is not installed)
# Writes each benchmark's output to OUTDIR; each part has a time limit so that one slow part
# cannot take the others' time. Total: about 9 minutes on an H100.
set -u -o pipefail
OUTDIR=$(realpath -m "${1:?usage: bash scripts/gpu_figures.sh OUTDIR}")
KEEP=${TMPDIR:-/tmp}/vaelab-gpu-runs
mkdir -p "$OUTDIR" && rm -rf "$KEEP"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } | tee "$OUTDIR/gpu.txt"
cd benchmarks || exit 1
# trainer against the bare loop (issue target: at least 0.9x in every case), then where its host time goes
timeout 130 python3 train_throughput.py --quick --device cuda 2>&1 | tee "$OUTDIR/train_throughput.txt"
timeout 45 python3 profile_trainer.py --device cuda 2>&1 | tee "$OUTDIR/profile_trainer.txt"
# the bare loop with each step captured in a CUDA graph: how far graphs would take the trainer
timeout 120 python3 cuda_graphs.py 2>&1 | tee "$OUTDIR/cuda_graphs.txt"
# fp32 eager / bf16 / bf16 + compile at 64 px RGB, the resnet VAE at batch 1024 (target: 2x)
timeout 180 python3 scaling.py --device cuda --repeats 2 --sizes 64px --set arch=resnet --set hidden=512 \
    --set latent_dim=32 --set batch_size=1024 2>&1 | tee "$OUTDIR/scaling.txt"
# VAEs on shapes at 128 px (--loss dlogistic, the means' gradient at --mean-scale e^-3, half the
# learning rate above 64 px): colour images' defaults (the conv VAE that reaches 26 dB at 64 px on 2 CPU
# cores) and the resnet network that is the default for grey images
shapes128() {  # NAME SETTINGS...
    local name=$1; shift
    timeout 100 python3 shapes.py quality --device cuda --image-size 128 "$@" --keep "$KEEP/$name" \
        2>&1 | tee "$OUTDIR/shapes128_$name.txt"
    cp "$KEEP/$name/shapes-quality/metrics.jsonl" "$OUTDIR/shapes128_${name}_metrics.jsonl" 2>/dev/null
}
shapes128 default
shapes128 resnet --set arch=resnet --set hidden=512 --set batch_size=128 --set lr_warmup_epochs=2 \
    --set kl_warmup_epochs=10 --set epochs=12
echo "figures in $OUTDIR"
