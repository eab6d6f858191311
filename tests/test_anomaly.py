"""The anomaly detector follows scikit-learn's outlier-detector conventions exactly."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import vaelab
from vaelab.cli import main
from vaelab.estimators import AnomalyDetector


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return vaelab.load_dataset("mnist-mini", "test")[0]


def test_use_before_fit_raises_not_fitted(vae_run: Path, digits: torch.Tensor) -> None:
    for method in ("score_samples", "decision_function", "predict"):
        with pytest.raises(NotFittedError):
            getattr(AnomalyDetector(vae_run), method)(digits[:2])


def test_init_only_stores_parameters_and_clones(vae_run: Path) -> None:
    detector = AnomalyDetector(vae_run, score="elbo", contamination=0.1)
    assert detector.get_params() == {"contamination": 0.1, "device": "auto", "k": 100, "run": vae_run,
                                     "score": "elbo", "seed": 0}  # fmt: skip
    assert clone(detector).get_params() == detector.get_params() and not hasattr(detector, "offset_")


@pytest.mark.parametrize("score", ["recon", "elbo"])
def test_offset_is_the_contamination_quantile_and_noise_is_anomalous(
    vae_run: Path, digits: torch.Tensor, score: str
) -> None:
    normal = digits[:1000]
    detector = AnomalyDetector(vae_run, score=score, contamination=0.1, device="cpu")
    assert detector.fit(normal) is detector
    flagged = (detector.predict(normal) == -1).mean()
    assert abs(flagged - 0.1) <= 0.002 + (0.0 if score == "recon" else 0.05)  # elbo draws fresh samples
    np.testing.assert_allclose(
        detector.decision_function(normal[:50]), detector.score_samples(normal[:50]) - detector.offset_
    )
    noise = (torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    assert (detector.predict(noise) == -1).all()
    # Every noise image scores below 99% of the digits (this 2-epoch, 2-D model rebuilds a few odd
    # digits about as badly as noise, once the noise's own pixel entropy is not counted against it).
    assert detector.score_samples(noise).max() < np.quantile(detector.score_samples(normal), 0.01)
    floats = normal[:20].float().numpy() / 255  # float arrays in [0, 1] give the same scores
    np.testing.assert_allclose(AnomalyDetector(vae_run, device="cpu").fit(normal).score_samples(floats),
                               AnomalyDetector(vae_run, device="cpu").fit(normal).score_samples(normal[:20]), rtol=1e-5)  # fmt: skip


def test_scores_need_the_right_model(ae_run: Path, digits: torch.Tensor) -> None:
    with pytest.raises(vaelab.VaelabError, match="needs a VAE"):
        AnomalyDetector(ae_run, score="nll").fit(digits[:10])
    with pytest.raises(vaelab.VaelabError, match="expects"):
        AnomalyDetector(ae_run).fit(torch.zeros(4, 1, 10, 10, dtype=torch.uint8))


def test_cli_fit_then_score(vae_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    detector = tmp_path / "det.json"
    assert main(["anomaly", "fit", str(run), "--contamination", "0.05", "-o", str(detector), "--quiet"]) == 0
    assert json.loads(detector.read_text())["score"] == "recon"
    capsys.readouterr()
    assert main(["anomaly", "score", str(detector), "-o", str(tmp_path / "s.csv"), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.reader((tmp_path / "s.csv").read_text().splitlines()))
    assert rows[0] == ["name", "score", "flag"] and len(rows) == 2001
    assert {row[2] for row in rows[1:]} == {"1", "-1"} and 0 < result["n_anomalies"] < 400
    assert Path(result["grid"]).is_file()
    (run / "model.safetensors").write_bytes((vae_run / "model.safetensors").read_bytes()[:-4] + b"\x00" * 4)
    assert main(["anomaly", "score", str(detector), "-o", str(tmp_path / "t.csv"), "--quiet"]) == 2
    assert "changed since" in capsys.readouterr().err and not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("score", ["knn", "recon+knn"])
def test_latent_neighbour_scores_follow_the_same_conventions(
    vae_run: Path, digits: torch.Tensor, score: str, tmp_path: Path
) -> None:
    normal = digits[:600]
    detector = AnomalyDetector(vae_run, score=score, contamination=0.1, device="cpu").fit(normal)
    fit_scores = detector._scores(normal, exclude_self=True)
    assert detector.offset_ == pytest.approx(np.quantile(fit_scores, 0.1))
    if score == "recon+knn":  # two parts standardized on the fit images: their sum has mean 0 there
        assert abs(fit_scores.mean()) < 1e-9 and fit_scores.std() > 1
    else:  # a fit image scored with itself left out: its five nearest other latents, scaled
        codes = vaelab.LatentEncoder(vae_run, device="cpu").fit().transform(normal).astype(np.float64)
        scaled = codes / codes.std(0)
        gaps = np.sort(np.linalg.norm(scaled - scaled[7], axis=1))[1:6]
        assert -fit_scores[7] == pytest.approx(gaps.mean(), rel=1e-4)
    noise = (torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    assert detector.score_samples(noise).mean() < np.quantile(detector.score_samples(digits[600:1200]), 0.05)

    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    saved = tmp_path / "det.json"
    vaelab.anomaly_fit(run, out=saved, score=score, contamination=0.1, dataset="mnist-mini", split="test",
                       device="cpu")  # fmt: skip
    from vaelab.apps.anomaly import load_detector

    fitted = AnomalyDetector(run, score=score, contamination=0.1, device="cpu").fit(digits)
    np.testing.assert_allclose(load_detector(saved, "cpu").score_samples(digits[:30]),
                               fitted.score_samples(digits[:30]), rtol=1e-6)  # fmt: skip


def test_knn_needs_more_normal_images_than_neighbours(vae_run: Path, digits: torch.Tensor) -> None:
    with pytest.raises(vaelab.VaelabError, match="more than 5 normal images"):
        AnomalyDetector(vae_run, score="knn", device="cpu").fit(digits[:5])
