# Every command on the GPU, end to end: run on a CUDA machine from the repository root.
# Usage: bash scripts/cuda_smoke.sh   (PICTURES=FOLDER also copies the sample grid and latent plot there;
# PYTHONPATH=src when vaelab is not installed)
set -e -x
V="python3 -m vaelab"
R=${TMPDIR:-/tmp}/vaelab-cuda-smoke
rm -rf "$R"
$V train --out $R/vae --model vae --latent-dim 2 --epochs 3 --device cuda --amp --json | tail -n 1
$V train --out $R/ae --model ae --latent-dim 16 --epochs 2 --device cuda --json | tail -n 1
$V evaluate $R/vae --k 100 --device cuda --json | tail -n 1
$V sample $R/vae -o $R/s.png --device cuda --json | tail -n 1
$V reconstruct $R/vae -o $R/r.png --device cuda --json | tail -n 1
$V latent-plot $R/vae -o $R/lp.png --device cuda --json | tail -n 1
$V compress $R/ae -o $R/c.vlz --device cuda --json | tail -n 1
$V decompress $R/ae $R/c.vlz -o $R/dec --device cpu --json | tail -n 1
$V denoise $R/ae --noise gaussian:0.3 -o $R/dn --device cuda --json | tail -n 1
$V embed $R/vae -o $R/e.npz --device cuda --json | tail -n 1
$V anomaly fit $R/ae --device cuda -o $R/det.json --json | tail -n 1
$V evaluate $R/vae --k 100 --device cpu --json | tail -n 1
if [ -n "${PICTURES:-}" ]; then cp $R/s.png $R/lp.png "$PICTURES"/; fi  # pictures to look at
echo "every command ran on CUDA; outputs in $R"
