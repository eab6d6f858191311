"""Where a run's images actually sit in latent space: a Gaussian mixture fitted to the latents of
its training images, to draw new latents from (ex-post density estimation, Ghosh et al., 2020,
"From Variational to Deterministic Autoencoders").

A VAE's decoder learns from latents near its posteriors, and the prior N(0, I) is only a penalty
on them: when the posteriors spread wider than the prior (a rich decoder, a light KL weight, a
short training) most prior draws decode to something no image looked like. A plain AE has no
prior at all. Drawing from the fitted mixture instead gives both models latents where the data
was encoded. The fit is stored in the run folder (safetensors, no pickle) beside the hash of the
weights it was fitted to, and fitted again when they change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vaelab import latent
from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.evaluation import scoring_images
from vaelab.fileio import atomic_output
from vaelab.models import AE, VAE
from vaelab.runs import run_images, weights_hash

DENSITY_FILE = "latent_density.safetensors"
LATENT_SOURCES = ("prior", "fitted")  # where commands that draw latents take them from
DEFAULT_COMPONENTS = 10
MAX_FIT_IMAGES = 10_000  # training images whose latents are fitted (a random subset of larger splits)
FORMAT = "1"


@dataclasses.dataclass(frozen=True)
class LatentDensity:
    """A mixture of full-covariance Gaussians over latents: weights [K], means [K, D], and the
    lower Cholesky factors of the covariances [K, D, D]."""

    weights: torch.Tensor
    means: torch.Tensor
    scale_tril: torch.Tensor

    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """n latents drawn from the mixture, [n, D] float32 on the CPU (seeded by `generator`);
        `temperature` scales each Gaussian's standard deviations around its mean."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = temperature * torch.randn(n, self.means.shape[1], 1, generator=generator, dtype=torch.float64)
        z = self.means[component] + (self.scale_tril[component] @ noise).squeeze(-1)
        return z.float()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """The mixture's log density of latents z [N, D], [N] (float64)."""
        gaussians = torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril)
        per_component = gaussians.log_prob(z.double().unsqueeze(1))  # [N, K]
        return torch.logsumexp(per_component + self.weights.log(), dim=1)


def fit_latent_density(
    codes: torch.Tensor, components: int = DEFAULT_COMPONENTS, seed: int = 0
) -> LatentDensity:
    """Fit a `components`-Gaussian mixture (full covariances, EM from a k-means start) to latents
    [N, D]; fewer components when there are fewer than two latents per component."""
    from sklearn.mixture import GaussianMixture

    if components < 1:
        raise VaelabError(f"components must be at least 1, got {components}")
    codes = codes.double()
    if len(codes) < 2:
        raise VaelabError(f"fitting a latent density needs at least 2 images, got {len(codes)}")
    k = max(1, min(components, len(codes) // 2))
    # a small floor on the variances keeps a collapsed (unused) latent coordinate from making a
    # covariance singular; relative to the latents' own scale
    floor = 1e-6 * float(codes.var(dim=0).mean().clamp_min(1e-12))
    mixture = GaussianMixture(k, covariance_type="full", reg_covar=floor, random_state=seed, max_iter=200)
    mixture.fit(codes.numpy())
    return LatentDensity(
        weights=torch.from_numpy(mixture.weights_ / mixture.weights_.sum()),
        means=torch.from_numpy(mixture.means_),
        scale_tril=torch.from_numpy(np.linalg.cholesky(mixture.covariances_)),
    )


def latent_density(
    run: str | Path,
    model: AE | VAE,
    config: TrainConfig,
    components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
) -> LatentDensity:
    """The run's fitted latent density: read from RUN/latent_density.safetensors when it was fitted
    to these weights with these settings, else fitted to the latents (posterior means for a VAE)
    of up to MAX_FIT_IMAGES images of the run's training split (its classes only, binarized once
    if it trained on binarized images) and saved there."""
    path = Path(run) / DENSITY_FILE
    key = {
        "format": FORMAT,
        "model_sha256": weights_hash(run),
        "components": str(components),
        "seed": str(seed),
    }
    saved = _read(path, key)
    if saved is not None:
        return saved
    train = run_images(model, config, "train")
    images, wanted = train.images, config.class_list(train.class_names)
    if wanted is not None and train.labels is not None:  # a run trained on some classes only
        images = images[torch.isin(train.labels, torch.tensor(wanted))]
    if len(images) > MAX_FIT_IMAGES:
        chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:MAX_FIT_IMAGES]
        images = images[chosen.sort().values]
    images = scoring_images(images, binarized=config.binarize != "none")  # as the model saw them
    density = fit_latent_density(latent.embed_images(model, images), components, seed)
    tensors = {"weights": density.weights, "means": density.means, "scale_tril": density.scale_tril}
    with atomic_output(path) as tmp:
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp), metadata=key)
    return density


def _read(path: Path, key: dict[str, str]) -> LatentDensity | None:
    """The density saved at `path` if its metadata equals `key`; None if absent, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if f.metadata() != key:
                return None
            return LatentDensity(f.get_tensor("weights"), f.get_tensor("means"), f.get_tensor("scale_tril"))
    except (SafetensorError, OSError, RuntimeError):
        return None  # a damaged file is fitted again and replaced
