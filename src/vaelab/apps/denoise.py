"""`vaelab denoise`: corrupt clean images, let the model clean them, and compare with the classical
methods a sceptic would try first, in PSNR and SSIM: a 3x3 median filter and total-variation
denoising for every noise; for salt and pepper the switching median (only pixels at 0 or 1 are
replaced by their 3x3 median); for dropped pixels (mask noise) biharmonic inpainting that is told
which pixels were dropped (the model is not).

Mask noise only writes 0 and salt and pepper only 0 and 1, so the model's estimate keeps every
other pixel as it came (the same knowledge the switching median uses); the decoder's own output is
reported too, as "decoder"."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from scipy.ndimage import median_filter
from skimage.restoration import denoise_tv_chambolle, inpaint_biharmonic

from vaelab import latent, plots
from vaelab.data.noise import parse_noise
from vaelab.data.transforms import to_unit
from vaelab.errors import VaelabError
from vaelab.evaluation import mean_squared_error, psnr, structural_similarity
from vaelab.fileio import write_result_record
from vaelab.options import DataDir, Dataset, Device, Draws, Inputs, NImages, Out, Run, Seed, Split
from vaelab.runs import open_run, select_images, weights_identity

TV_WEIGHT = 0.1  # scikit-image's default strength for total-variation denoising
BASELINE_NAMES = {
    "median": "median 3x3",
    "tv": "total variation",
    "switching_median": "switching median",
    "inpaint": "inpainting",
}


def median3(images: np.ndarray) -> np.ndarray:
    """3x3 median filter of every channel of images [N, C, H, W]."""
    return median_filter(images, size=(1, 1, 3, 3), mode="reflect")


def total_variation(images: np.ndarray) -> np.ndarray:
    """Chambolle total-variation denoising of each image [C, H, W] of images [N, C, H, W]."""
    return np.stack([denoise_tv_chambolle(image, weight=TV_WEIGHT, channel_axis=0) for image in images])


def inpaint(images: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """Biharmonic inpainting (scikit-image) of the dropped pixels of each channel of images
    [N, C, H, W], given the boolean mask of the dropped pixels."""
    return np.stack(
        [
            [inpaint_biharmonic(channel, hole) for channel, hole in zip(image, holes)]
            for image, holes in zip(images, dropped)
        ]
    )


def image_scores(clean: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR (dB) and SSIM of estimates against clean images, both [N, C, H, W] in [0, 1]
    (the same SSIM as vaelab evaluate: an 11 x 11 Gaussian window, Wang et al., 2004)."""
    estimate_t, clean_t = torch.from_numpy(estimate), torch.from_numpy(clean)
    return psnr(mean_squared_error(estimate_t, clean_t)).numpy(), structural_similarity(
        estimate_t, clean_t
    ).numpy()


def denoise(
    run: Annotated[Run, "run folder (ideally trained with noise)"],
    noise: Annotated[
        str | None, "gaussian:SIGMA, salt-pepper:P or mask:FRACTION (default: the run's)"
    ] = None,
    out: Annotated[Out, "PNG to write"] = "denoised.png",
    dataset: Dataset = None,
    data_dir: DataDir = None,
    split: Split = "test",
    inputs: Inputs = None,
    n_images: NImages = None,
    seed: Annotated[Seed, "seed of the noise"] = 0,
    draws: Draws = 8,
    device: Device = "auto",
) -> dict[str, Any]:
    """Add `noise` (default: the noise the run was trained with) to clean images, denoise them with
    the model and with the classical methods (median, total variation; inpainting for mask noise),
    and report PSNR and SSIM of each; rows of noisy / model / best classical / clean images go to a
    PNG. A pixelcnn decoder's clean image is the average of
    `draws` images drawn from p(x|z)."""
    plots.check_figure_path(out)
    weights = weights_identity(run)
    model, config = open_run(run, device)
    spec = noise or config.noise
    if spec is None:
        raise VaelabError(
            f"{run} was not trained with noise; give the noise to add (--noise gaussian:0.3, say)"
        )
    corruption = parse_noise(spec)
    if n_images is not None and n_images < 1:
        raise VaelabError(f"n_images must be at least 1, got {n_images}")
    images = select_images(model, config, dataset, data_dir, split, inputs)
    clean = to_unit(images.images[:n_images])
    noisy, hit = corruption.corrupt(clean, torch.Generator().manual_seed(seed))
    decoded = latent.reconstruct(model, noisy, draws, seed)
    untouched = corruption.untouched(noisy)
    estimates = {
        "noisy": noisy.numpy(),
        "model": (decoded if untouched is None else torch.where(untouched, noisy, decoded)).numpy(),
        "median": median3(noisy.numpy()),
        "tv": total_variation(noisy.numpy().astype(np.float64)).astype(np.float32),
    }
    if untouched is not None:
        estimates["decoder"] = decoded.numpy()
    if corruption.kind == "salt-pepper":
        estimates["switching_median"] = np.where(untouched.numpy(), noisy.numpy(), estimates["median"])
    if corruption.kind == "mask":
        estimates["inpaint"] = inpaint(noisy.numpy().astype(np.float64), hit.numpy()).astype(np.float32)
    clean_np = clean.numpy()
    psnr, ssim = {}, {}
    for name, estimate in estimates.items():
        p, s = image_scores(clean_np, estimate)
        psnr[name], ssim[name] = float(p.mean()), float(s.mean())
    shown = slice(0, min(10, len(clean)))
    baselines = [name for name in estimates if name not in ("noisy", "model", "decoder")]
    best = max(baselines, key=psnr.__getitem__)
    rows = [("noisy", noisy[shown]), (model.config.model.upper(), torch.from_numpy(estimates["model"][shown])),
            (BASELINE_NAMES[best], torch.from_numpy(estimates[best][shown])), ("clean", clean[shown])]  # fmt: skip
    title = (
        f"{corruption}: PSNR {psnr['noisy']:.1f} dB noisy, {psnr['model']:.1f} model, "
        f"{psnr[best]:.1f} {BASELINE_NAMES[best]}"
    )
    plots.save_labelled_rows(rows, out, title)
    result = {
        "out": str(out),
        "output": str(out),
        "noise": str(corruption),
        "n_images": len(clean),
        "psnr": psnr,
        "ssim": ssim,
        "best_baseline": best,
        "model_beats_baselines": psnr["model"] > psnr[best],
    }
    result["record"] = str(write_result_record(out, "denoise", {**result, **weights}))
    return result


def format_table(result: dict[str, Any]) -> str:
    """PSNR and SSIM of each method as a small terminal table."""
    lines = [
        f"{result['n_images']} images, noise {result['noise']}",
        f"{'method':<18}{'PSNR (dB)':>11}{'SSIM':>8}",
    ]
    for name in result["psnr"]:
        lines.append(f"{name:<18}{result['psnr'][name]:>11.2f}{result['ssim'][name]:>8.3f}")
    return "\n".join(lines)
