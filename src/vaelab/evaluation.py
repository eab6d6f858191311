"""Honest figures for a trained model, in nats per image: ELBO parts, importance-sampled NLL,
active units, bits per dimension; MSE, PSNR and SSIM of the mean reconstructions.

The importance-sampled estimate (Burda et al., 2015) is
    log p(x) ~= log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x),
a lower bound in expectation that tightens as K grows and is never looser than the ELBO.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vaelab.data.transforms import binarize, to_unit
from vaelab.device import Rows, map_batches, model_device
from vaelab.distributions import bits_per_dim, entropy_floor
from vaelab.gaussian import kl_to_standard_normal, reparameterize
from vaelab.importance import importance_log_weights, log_mean_exp
from vaelab.models import AE, VAE

# The test images of a binarized run are binarized once with this seed, so every evaluation of
# every model sees the same 0/1 images.
TEST_BINARIZATION_SEED = 20151110
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al.: a unit is active when Cov_x(E_q[z_d]) > 0.01


@dataclass
class Evaluation:
    """Per-image figures over a test set (nats per image unless noted)."""

    nll: torch.Tensor | None  # importance-sampled -log p(x), [N]
    neg_elbo: torch.Tensor | None  # recon + kl, [N]
    recon: torch.Tensor  # E_q[-log p(x|z)] (VAE) or the pixel loss at z (AE), [N]
    kl: torch.Tensor | None  # closed-form KL(q || N(0, I)), [N]
    latent_means: torch.Tensor  # E_q[z], [N, D]
    mse: torch.Tensor | None  # mean squared error per sub-pixel of the mean reconstruction, [N]
    ssim: torch.Tensor | None  # structural similarity of the mean reconstruction, [N]
    # (mse and ssim are None when the decoder has no closed-form mean image)
    image_shape: tuple[int, int, int]  # (C, H, W): C * H * W dimensions per image, for bits per dim


@torch.no_grad()
def evaluate_images(
    model: AE | VAE, images: torch.Tensor, k: int, seed: int = 0, batch_size: int = 64, progress: Any = None
) -> Evaluation:
    """Score uint8 images [N, C, H, W] (already binarized if the model expects it).

    One pass over the images: encode, then K posterior draws decoded and scored per image (the
    importance-sampled NLL, for a VAE with a likelihood), the KL in closed form, and the mean
    reconstruction at the posterior mean where the decoder has a closed-form mean. Nothing is
    drawn pixel by pixel.
    """
    device = model_device(model)
    generator = torch.Generator(device).manual_seed(seed)
    likelihood = isinstance(model, VAE) and model.pixels.likelihood
    rows = Rows(len(images))
    for start in range(0, len(images), batch_size):
        x = to_unit(images[start : start + batch_size].to(device))
        if isinstance(model, VAE):
            mu, log_var = model.encode(x)
            if likelihood:
                log_w, log_px_z, _ = importance_log_weights(  # chunked over K: memory stays bounded
                    x, mu, log_var, lambda xs, z: -model.reconstruction_loss(z, xs), k, generator
                )
                rows.put("nll", start, -log_mean_exp(log_w))
                rows.put("recon", start, -log_px_z.mean(1))
            else:
                z = reparameterize(mu, log_var, generator)
                rows.put("recon", start, model.reconstruction_loss(z, x))
            rows.put("kl", start, kl_to_standard_normal(mu, log_var).sum(1))
            params = model.decoder(mu)
        else:
            mu = model.encode(x)
            params = model.decoder(mu)
            rows.put("recon", start, model.pixels.loss(x, params))
        rows.put("mu", start, mu)
        if model.pixels.closed_form_mean:
            reconstruction = model.pixels.mean(params)
            rows.put("mse", start, mean_squared_error(reconstruction, x))
            rows.put("ssim", start, structural_similarity(reconstruction, x))
        if progress is not None:
            progress.update(len(x))
    cat = {name: None if (values := rows.get(name)) is None else values.double()
           for name in ("nll", "recon", "kl", "mu", "mse", "ssim")}  # fmt: skip
    neg_elbo = cat["recon"] + cat["kl"] if cat["kl"] is not None else None
    return Evaluation(
        cat["nll"],
        neg_elbo,
        cat["recon"],
        cat["kl"],
        cat["mu"],
        cat["mse"],
        cat["ssim"],
        tuple(images.shape[1:]),
    )


def mean_squared_error(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel of each image [B, C, H, W] (values in [0, 1]), [B]."""
    return (estimate.double() - target.double()).pow(2).flatten(1).mean(1)


def structural_similarity(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al., 2004) of each image [B, C, H, W] in [0, 1] to its target, [B]: the
    paper's 11 x 11 Gaussian window (sigma 1.5, smaller for tiny images), K1 = 0.01, K2 = 0.03,
    dynamic range 1, averaged over the valid window positions and the channels."""
    height, width = estimate.shape[-2:]
    size = min(11, height, width)
    coords = torch.arange(size, dtype=torch.float64, device=estimate.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    a, b = estimate.double(), target.double()

    def window_rows(n: int) -> torch.Tensor:  # [n - size + 1, n]: row i holds the window at i..i+size-1
        band = torch.zeros(n - size + 1, n, dtype=torch.float64, device=estimate.device)
        for offset in range(size):
            band.diagonal(offset).copy_(g[offset].expand(n - size + 1))
        return band

    down, across = window_rows(height), window_rows(width).T

    def blur(t: torch.Tensor) -> torch.Tensor:
        # The separable Gaussian window over every valid position, as two matrix products: the
        # same sums as a depthwise convolution, several times faster in float64 on a CPU.
        return down @ t @ across

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1)


def png_bits_per_dim(images: torch.Tensor) -> float:
    """Bits per sub-pixel that lossless PNG (zlib level 9) spends on uint8 images [N, C, H, W],
    each saved as its own file: the baseline any likelihood model's bits per dimension should beat."""
    total_bytes = 0
    for image in images:
        array = image.permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(
            buffer, "PNG", compress_level=9
        )
        total_bytes += buffer.tell()
    return 8 * total_bytes / images.numel()


def active_units(latent_means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """How many latent dimensions' posterior means vary over the data by more than `threshold`."""
    return int((latent_means.var(0, unbiased=True) > threshold).sum())


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1], from their mean squared errors per pixel."""
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error."""
    n = len(values)
    return float(values.mean()), float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0


def scoring_images(images: torch.Tensor, binarized: bool) -> torch.Tensor:
    """The test images a model is scored on: binarized once with TEST_BINARIZATION_SEED if it was
    trained on binarized images, else as they are (uint8)."""
    if not binarized:
        return images
    generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    return (binarize(to_unit(images), generator) * 255).to(torch.uint8)


def summary(evaluation: Evaluation, k: int) -> dict[str, Any]:
    """The figures of an Evaluation as plain numbers (what eval.json holds)."""
    out: dict[str, Any] = {"k": k, "n_images": len(evaluation.recon), "units": "nats per image"}
    for name in ("nll", "neg_elbo", "recon", "kl"):
        values = getattr(evaluation, name)
        if values is not None:
            out[name], out[f"{name}_se"] = mean_and_se(values)
        else:
            out[name] = out[f"{name}_se"] = None
    out["active_units"] = active_units(evaluation.latent_means)
    out["latent_dim"] = int(evaluation.latent_means.shape[1])
    dims = math.prod(evaluation.image_shape)
    out["bits_per_dim"] = bits_per_dim(out["nll"], dims) if out["nll"] is not None else None
    if evaluation.mse is not None:
        out["mse"], out["mse_se"] = mean_and_se(evaluation.mse)
        out["psnr"], out["psnr_se"] = mean_and_se(psnr(evaluation.mse))
        out["ssim"], out["ssim_se"] = mean_and_se(evaluation.ssim)
    else:
        for name in ("mse", "psnr", "ssim"):
            out[name] = out[f"{name}_se"] = None
    return out


MIG_BINS = 20  # equal-width bins per latent coordinate and per continuous factor, as in Chen et al.'s
# and Locatello et al.'s (2019) reference evaluations


def discretize(values: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """Bin indices of values [N] in `bins` equal-width bins over their range; a column of few
    distinct values (a categorical factor) keeps them as they are."""
    values = np.asarray(values, dtype=np.float64)
    distinct = np.unique(values)
    if len(distinct) <= bins:
        return np.searchsorted(distinct, values)
    edges = np.linspace(values.min(), values.max(), bins + 1)[1:-1]
    return np.digitize(values, edges)


def mutual_information_gap(latents: np.ndarray, factors: dict[str, np.ndarray]) -> dict[str, Any]:
    """MIG (Chen et al., 2018) of latent codes [N, D] against known factors (name -> [N]).

    For each factor v_k: the mutual information I(z_j; v_k) of every (discretized) coordinate, and
    the gap between the largest and second largest divided by the factor's entropy H(v_k). MIG is
    the mean gap over factors, in [0, 1]: 1 when each factor lives in one coordinate alone.
    """
    from sklearn.metrics import mutual_info_score

    codes = [discretize(column) for column in np.asarray(latents).T]
    gaps, best = {}, {}
    for name, values in factors.items():
        v = discretize(values)
        entropy = mutual_info_score(v, v)
        if entropy <= 0:
            continue
        mi = np.array([mutual_info_score(v, code) for code in codes])
        order = np.argsort(mi)[::-1]
        second = mi[order[1]] if len(mi) > 1 else 0.0
        gaps[name] = float((mi[order[0]] - second) / entropy)
        best[name] = int(order[0])
    return {"mig": float(np.mean(list(gaps.values()))), "mig_per_factor": gaps, "mig_best_dim": best}


def above_floor(model: AE | VAE, loss: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A loss per image less each uint8 image's own pixel entropy (the floor of a Bernoulli loss on
    images that are not binary); other losses as they are."""
    if model.config.loss == "bernoulli":
        return loss - entropy_floor(to_unit(images)).to(loss.dtype)
    return loss


def reconstruction_scores(model: AE | VAE, images: torch.Tensor) -> torch.Tensor:
    """How badly each uint8 image [N, C, H, W] is rebuilt from its latent mean: its reconstruction
    loss in nats per image (pixel-sum units for l1 / l2) above its floor, float64 [N]."""
    losses = map_batches(lambda x: model.reconstruction_loss(model.embed(x), x), images, model_device(model))
    return above_floor(model, losses.double(), images)
