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
    for score in ("nll", "elbo"):
        with pytest.raises(vaelab.VaelabError, match=f"score '{score}' needs a VAE"):
            AnomalyDetector(ae_run, score=score).fit(digits[:10])
    with pytest.raises(vaelab.VaelabError, match="expects"):
        AnomalyDetector(ae_run).fit(torch.zeros(4, 1, 10, 10, dtype=torch.uint8))


def test_cli_fit_then_score(vae_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    detector = tmp_path / "det.json"
    assert main(["anomaly", "fit", str(run), "--contamination", "0.05", "-o", str(detector), "--quiet"]) == 0
    saved = json.loads(detector.read_text())
    assert saved["score"] == "recon"
    said = capsys.readouterr().out
    assert said.startswith(
        f"fitted a recon detector on {saved['n_fit_images']:,} normal images into {detector}"
    )
    assert (
        f"the 5% of them that score lowest (higher = more normal) fall below its threshold {saved['offset']:.4g}"
        in said
    )
    assert main(["anomaly", "score", str(detector), "-o", str(tmp_path / "s.csv"), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["anomaly", "score", str(detector), "-o", str(tmp_path / "s2.csv"), "--quiet"]) == 0
    share = result["n_anomalies"] / 2000
    assert capsys.readouterr().out.startswith(
        f"{result['n_anomalies']:,} of 2,000 images ({share:.1%}) are anomalies, scoring below the threshold"
    )
    rows = list(csv.reader((tmp_path / "s.csv").read_text().splitlines()))
    assert rows[0] == ["name", "score", "flag"] and len(rows) == 2001
    assert {row[2] for row in rows[1:]} == {"1", "-1"} and 0 < result["n_anomalies"] < 400
    assert Path(result["grid"]).is_file()
    (run / "model.safetensors").write_bytes((vae_run / "model.safetensors").read_bytes()[:-4] + b"\x00" * 4)
    assert main(["anomaly", "score", str(detector), "-o", str(tmp_path / "t.csv"), "--quiet"]) == 2
    assert "changed since" in capsys.readouterr().err and not (tmp_path / "t.csv").exists()


def test_an_autoencoder_scores_by_its_codes_neighbours_too(ae_run: Path, digits: torch.Tensor) -> None:
    normal = digits[:600]
    detector = AnomalyDetector(ae_run, score="knn", contamination=0.1, device="cpu").fit(normal)
    codes = vaelab.LatentEncoder(ae_run, device="cpu").fit().transform(normal).astype(np.float64)
    scaled = codes / codes.std(0)  # the same brute-force distance as for a VAE's latent means
    gaps = np.sort(np.linalg.norm(scaled[:, None] - scaled[None], axis=2), axis=1)[:, 1:6].mean(1)
    assert detector.offset_ == pytest.approx(np.quantile(-gaps, 0.1), rel=1e-4)
    noise = (torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    assert detector.score_samples(noise).mean() < np.quantile(detector.score_samples(digits[600:1200]), 0.05)


@pytest.mark.parametrize("score", ["knn", "recon+knn", "ssim+knn"])
def test_latent_neighbour_scores_follow_the_same_conventions(
    vae_run: Path, digits: torch.Tensor, score: str, tmp_path: Path
) -> None:
    normal = digits[:600]
    detector = AnomalyDetector(vae_run, score=score, contamination=0.1, device="cpu").fit(normal)
    # A fit image is scored with itself left out: the mean scaled distance to its five nearest
    # *other* latents (computed here from the public encoder, brute force).
    codes = vaelab.LatentEncoder(vae_run, device="cpu").fit().transform(normal).astype(np.float64)
    scaled = codes / codes.std(0)
    gaps = np.sort(np.linalg.norm(scaled[:, None] - scaled[None], axis=2), axis=1)[:, 1:6].mean(1)
    fit_scores = -gaps
    if "+" in score:  # two parts, each standardized on the fit images: their sum has mean 0 there
        part = score.split("+")[0]
        loss = -AnomalyDetector(vae_run, score=part, device="cpu").fit(normal).score_samples(normal)
        fit_scores = -((loss - loss.mean()) / loss.std() + (gaps - gaps.mean()) / gaps.std())
        assert abs(fit_scores.mean()) < 1e-9 and fit_scores.std() > 1
    assert detector.offset_ == pytest.approx(np.quantile(fit_scores, 0.1), rel=1e-4)
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


def test_ssim_score_is_one_minus_the_ssim_of_the_mean_reconstruction(
    vae_run: Path, ae_run: Path, digits: torch.Tensor
) -> None:
    from vaelab.evaluation import structural_similarity

    images = digits[:40]
    x = images.float() / 255
    detectors = {}
    for run in (vae_run, ae_run):
        detectors[run] = AnomalyDetector(run, score="ssim", contamination=0.1, device="cpu").fit(digits[:300])
        model = detectors[run].model_
        with torch.no_grad():
            expected = structural_similarity(model.decode(model.embed(x)), x).double().numpy() - 1
        np.testing.assert_allclose(detectors[run].score_samples(images), expected, rtol=1e-6, atol=1e-9)
        assert (expected <= 0).all() and (expected >= -2).all()  # SSIM is in [-1, 1]
    # The VAE rebuilds digits with some structure; noise shares none with any reconstruction (SSIM
    # near 0). (The 1-epoch, 2-D AE rebuilds digits about that badly too: SSIM saturates at 0.)
    noise = (torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    assert (detectors[vae_run].predict(noise) == -1).all()
    # ssim+knn: two parts standardized on the fit images, as recon+knn
    both = AnomalyDetector(vae_run, score="ssim+knn", contamination=0.1, device="cpu").fit(digits[:600])
    assert both.score_samples(digits[600:1200]).mean() > both.score_samples(noise).max()


def test_ssim_needs_a_mean_image(tmp_path: Path, digits: torch.Tensor) -> None:
    run = tmp_path / "pixelcnn"  # binarized digits get the autoregressive decoder: no mean image
    vaelab.train(run, model="vae", arch="mlp", latent_dim=2, epochs=1, classes="1", binarize="dynamic",
                 device="cpu", progress=False)  # fmt: skip
    with pytest.raises(vaelab.VaelabError, match="mean reconstruction"):
        AnomalyDetector(run, score="ssim", device="cpu").fit(digits[:10])


def test_knn_needs_more_normal_images_than_neighbours(vae_run: Path, digits: torch.Tensor) -> None:
    with pytest.raises(vaelab.VaelabError, match="more than 5 normal images"):
        AnomalyDetector(vae_run, score="knn", device="cpu").fit(digits[:5])


def test_fit_on_a_one_class_run_takes_only_its_class_as_normal(tmp_path: Path) -> None:
    run = tmp_path / "ones"
    vaelab.train(
        run, model="ae", arch="mlp", latent_dim=2, epochs=1, classes="1", device="cpu", progress=False
    )
    labels = vaelab.load_dataset("mnist-mini", "train")[1]
    fitted = vaelab.anomaly_fit(run, out=tmp_path / "det.json", device="cpu")
    assert fitted["classes"] == [1] and fitted["n_images"] == int((labels == 1).sum()) < len(labels) // 5
    everything = vaelab.anomaly_fit(run, out=tmp_path / "all.json", dataset="mnist-mini", device="cpu")
    assert everything["classes"] is None and everything["n_images"] == len(labels)
