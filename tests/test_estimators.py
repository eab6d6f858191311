"""The scikit-learn estimators over a run behave like scikit-learn's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

import vaelab
from vaelab import LatentEncoder


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return vaelab.load_dataset("mnist-mini", "test")[0][:300]


def test_init_stores_parameters_and_transform_needs_fit(vae_run: Path, digits: torch.Tensor) -> None:
    encoder = LatentEncoder(vae_run, device="cpu")
    assert encoder.get_params() == {"run": vae_run, "device": "cpu"}
    assert clone(encoder).get_params() == encoder.get_params()
    with pytest.raises(NotFittedError):
        encoder.transform(digits)


def test_transform_gives_the_posterior_means(vae_run: Path, digits: torch.Tensor) -> None:
    encoder = LatentEncoder(vae_run, device="cpu").fit()
    codes = encoder.transform(digits)
    assert codes.shape == (300, 2) and codes.dtype == np.float32
    mu, _ = vaelab.load(vae_run).encode(digits.float() / 255)
    np.testing.assert_allclose(codes, mu.detach().numpy(), rtol=1e-5, atol=1e-5)
    # floats in [0, 1] and [N, H, W] arrays are the same images
    np.testing.assert_allclose(encoder.transform(digits[:, 0].numpy() / 255.0), codes, atol=1e-5)
    assert list(encoder.get_feature_names_out()) == ["z0", "z1"]
    with pytest.raises(vaelab.VaelabError, match="model expects"):
        encoder.transform(np.zeros((2, 1, 10, 10), dtype=np.uint8))


def test_a_pipeline_clusters_images_by_their_latents(vae_run: Path, digits: torch.Tensor) -> None:
    pipeline = make_pipeline(LatentEncoder(vae_run, device="cpu"), KMeans(3, n_init=3, random_state=0))
    clusters = pipeline.fit_predict(digits.numpy())
    assert clusters.shape == (300,) and set(clusters.tolist()) == {0, 1, 2}
    codes = LatentEncoder(vae_run, device="cpu").fit().transform(digits)
    centres = pipeline[-1].cluster_centers_
    nearest = ((codes[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == clusters).all()  # each image went to the centre nearest its latent
