"""`vaelab evaluate`: score a run on its test split and write eval.json beside its weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import torch
from tqdm.auto import tqdm

from vaelab import latent
from vaelab.classifier import classifier_for, features, frechet_distance
from vaelab.config import TrainConfig
from vaelab.data.transforms import to_unit
from vaelab.device import map_batches, model_device
from vaelab.errors import VaelabError
from vaelab.evaluation import (
    TEST_BINARIZATION_SEED,
    evaluate_images,
    mutual_information_gap,
    png_bits_per_dim,
    scoring_images,
    summary,
)
from vaelab.fileio import write_json
from vaelab.latent_density import LatentDensity, latent_density
from vaelab.models import AE, VAE
from vaelab.options import DataDir, Dataset, Device, NImages, Progress, Run, Seed
from vaelab.runs import open_run, run_images, select_images, weights_identity

logger = logging.getLogger(__name__)

EVAL_FILE = "eval.json"


def evaluate(
    run: Run,
    k: Annotated[int | None, "importance samples per image for the NLL (default: 1000)"] = None,
    n_images: Annotated[NImages, "score only the first N test images (default: all)"] = None,
    dataset: Annotated[Dataset, "score on another dataset's test split (default: the run's)"] = None,
    data_dir: DataDir = None,
    seed: Annotated[Seed, "seed of the posterior samples"] = 0,
    device: Device = "auto",
    progress: Progress = True,
    quality: Annotated[
        bool | None,
        "sample quality: Fréchet distance and classifier accuracy on reconstructions (default: on, "
        "except for a pixelcnn decoder, which draws every image pixel by pixel)",
    ] = None,
) -> dict[str, Any]:
    """Negative ELBO, its parts, the importance-sampled NLL (K samples per image, 1000 by
    default) in nats per image and bits per dimension beside what PNG spends on the same images,
    active units, MSE, PSNR and SSIM on the test split, and the mutual information gap (`mig`)
    where the dataset has known factors (shapes); written to RUN/eval.json.

    NLL needs a likelihood: a VAE with the bernoulli or dlogistic loss. For other runs the figures that make
    sense are reported and `nll_absent` says why NLL is not; asking for `k` then is an error.
    With `quality` and a labelled dataset, sample quality is measured too (see sample_quality).
    `quality` None (the default) measures it when the decoder has a closed-form mean image; a
    pixelcnn decoder must draw every image pixel by pixel (about a minute for 2,000 digits on
    2 CPU cores), so it then needs quality=True and `quality_absent` says so.
    """
    weights = weights_identity(run)  # before the model is read: a run still training may save newer ones
    model, config = open_run(run, device)
    has_likelihood = isinstance(model, VAE) and model.pixels.likelihood
    if k is not None and k < 1:
        raise VaelabError(f"k must be at least 1, got {k}")
    if k is not None and not has_likelihood:
        raise VaelabError(f"{run} has no likelihood ({_why_no_nll(model)}), so NLL is undefined; drop k")
    k = 1000 if k is None else k
    if n_images is not None and n_images < 1:
        raise VaelabError(f"n_images must be at least 1, got {n_images}")
    name = dataset or config.dataset
    test = select_images(model, config, dataset, data_dir)
    images = scoring_images(test.images[:n_images], binarized=config.binarize != "none")
    bar = tqdm(
        total=len(images), desc=f"evaluate (K={k})", unit="img", disable=not progress, dynamic_ncols=True
    )
    with bar:
        evaluation = evaluate_images(model, images, k if has_likelihood else 1, seed=seed, progress=bar)
    result = {
        **summary(evaluation, k if has_likelihood else 0),
        "dataset": name,
        "split": "test",
        "binarized_test_seed": TEST_BINARIZATION_SEED if config.binarize != "none" else None,
        "model": model.config.model,
        "loss": model.config.loss,
        "nll_absent": None if has_likelihood else _why_no_nll(model),
        "png_bits_per_dim": png_bits_per_dim(images),
        **weights,  # which weights these figures are of: `vaelab report` tells when the run has newer ones
    }
    if test.factors:  # known generative factors (shapes): how disentangled the latent is
        n = len(images)
        factors = {name: values[:n] for name, values in test.factors.items()}
        result.update(mutual_information_gap(evaluation.latent_means.numpy(), factors))
    drawn = not model.pixels.closed_form_mean
    if quality is None and drawn:
        result["quality_absent"] = (
            f"a {model.pixels.name} decoder draws images pixel by pixel; pass quality=True (--quality) to "
            "measure sample quality anyway (about a minute per 2,000 images on 2 CPU cores)"
        )
    elif quality is not False and test.labels is not None:
        try:
            density: LatentDensity | None = latent_density(run, model, config, seed=seed)
        except VaelabError as error:  # e.g. the run's own training images are gone
            logger.warning("no fitted latent density (%s): fd_fitted left out", error)
            density = None
        result.update(
            sample_quality(model, config, test.images[:n_images], test.labels[:n_images], seed, density)
        )
    if drawn:
        result["mse_absent"] = f"a {model.pixels.name} decoder has no closed-form mean image"
    if has_likelihood and config.binarize == "none" and model.config.loss == "bernoulli":
        result["note"] = (
            "trained and scored on non-binary images: the Bernoulli 'likelihood' of such pixels is not a "
            "normalized density, so NLL does not compare with binarized-MNIST figures and has no bits per "
            "dimension (train with --loss dlogistic for those)"
        )
        result["bits_per_dim"] = None
    path = Path(run) / EVAL_FILE
    write_json(path, result)
    result["out"] = result["output"] = str(path)
    return result


@torch.no_grad()
def sample_quality(
    model: AE | VAE,
    config: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    density: LatentDensity | None = None,
) -> dict[str, Any]:
    """Fréchet distance between as many samples as test images and the test images, in the feature
    space of the dataset's cached LeNet classifier (`fd`: latents from N(0, I); `fd_fitted`: from
    `density`, the mixture fitted to the training latents, when given); the same distance from
    training images (the floor a perfect generator would reach); the classifier's accuracy on the
    test images and on their reconstructions.

    Samples and reconstructions are mean images where the decoder has a closed form; with a
    pixelcnn decoder they are drawn (one image per latent), so FD compares like with like.
    """
    device = model_device(model)
    classifier = classifier_for(config.dataset, config.data_dir, config.image_size, device)
    real = to_unit(images)
    generator = torch.Generator(device).manual_seed(seed)
    samples = torch.cat(
        [model.sample(min(500, len(real) - s), generator).cpu() for s in range(0, len(real), 500)]
    )
    codes = latent.embed_images(model, images)
    if model.pixels.closed_form_mean:
        reconstructions = latent.decode_latents(model, codes)
    else:
        reconstructions = map_batches(lambda z: model.decode(z, draws=1, generator=generator), codes, device)
    train = run_images(model, config, "train").images
    floor_images = to_unit(
        train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(real)]]
    )
    real_features = features(classifier, real)
    fitted: dict[str, float] = {}
    if density is not None:
        z = density.sample(len(real), torch.Generator().manual_seed(seed))
        drawn = map_batches(lambda batch: model.generate(batch, generator), z, device)
        fitted["fd_fitted"] = frechet_distance(features(classifier, drawn), real_features)

    def accuracy(x: torch.Tensor) -> float:
        predicted = map_batches(lambda batch: classifier(batch).argmax(1), x, device)
        return float((predicted.long() == labels).double().mean())

    return {
        "fd": frechet_distance(features(classifier, samples), real_features),
        **fitted,
        "fd_train_vs_test": frechet_distance(features(classifier, floor_images), real_features),
        "classifier_accuracy": accuracy(real),
        "recon_accuracy": accuracy(reconstructions),
    }


def _why_no_nll(model: Any) -> str:
    if not isinstance(model, VAE):
        return "a plain autoencoder defines no p(x): it has no prior and no posterior"
    return f"the {model.pixels.name} loss is a distance, not a normalized likelihood"


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a small terminal table."""
    rows = [("images", f"{result['n_images']} ({result['dataset']} test split)")]
    for key, label in (("nll", f"NLL (K={result['k']})"), ("neg_elbo", "-ELBO"), ("recon", "  reconstruction"),
                       ("kl", "  KL")):  # fmt: skip
        if result.get(key) is not None:
            rows.append((label, f"{result[key]:.2f} ± {result[key + '_se']:.2f} nats per image"))
    if result.get("bits_per_dim") is not None:
        rows.append(("NLL in bits", f"{result['bits_per_dim']:.3f} bits per dimension"))
    if result.get("nll_absent"):
        rows.append(("NLL", f"not defined: {result['nll_absent']}"))
    rows.append(("PNG", f"{result['png_bits_per_dim']:.3f} bits per dimension (lossless, same images)"))
    rows.append(("active units", f"{result['active_units']} of {result['latent_dim']}"))
    if result.get("mse") is not None:
        rows.append(
            (
                "MSE / PSNR / SSIM",
                f"{result['mse']:.4f} per pixel / {result['psnr']:.2f} dB / {result['ssim']:.3f}",
            )
        )
    else:
        rows.append(("MSE / PSNR / SSIM", f"not computed: {result['mse_absent']}"))
    if result.get("mig") is not None:
        per_factor = ", ".join(f"{k} {v:.2f}" for k, v in result["mig_per_factor"].items())
        rows.append(("MIG (disentanglement)", f"{result['mig']:.3f} ({per_factor})"))
    if result.get("quality_absent"):
        rows.append(("sample quality", f"not measured: {result['quality_absent']}"))
    if "fd" in result:
        rows.append(
            (
                "Fréchet distance",
                f"{result['fd']:.2f} from N(0, I)"
                + (f", {result['fd_fitted']:.2f} from the fitted density" if "fd_fitted" in result else "")
                + f" (train vs test images: {result['fd_train_vs_test']:.2f})",
            )
        )
        rows.append(
            (
                "classifier accuracy",
                f"{result['recon_accuracy']:.1%} on reconstructions, {result['classifier_accuracy']:.1%} on test images",
            )
        )
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
