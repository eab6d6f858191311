"""`vaelab report`: one self-contained HTML page per run, with every picture embedded and the
results the run folder holds."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaelab
from conftest import run_cli
from vaelab import checkpoint
from vaelab.apps import run_report

PIXELCNN_RUN = Path(__file__).parent / "fixtures" / "run-0.1.0"


def embedded_images(html: str) -> list[np.ndarray]:
    """Every <img> of the page, decoded; fails if one is not an embedded PNG."""
    sources = re.findall(r"<img src='([^']*)'", html)
    images = []
    for source in sources:
        assert source.startswith("data:image/png;base64,"), source[:60]
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            assert image.format == "PNG"
            images.append(np.asarray(image.convert("L"), dtype=np.float64))
    return images


@pytest.fixture(scope="module")
def run_with_results(vae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the 2-D VAE run holding a denoise and a cluster result and an evaluation."""
    run = tmp_path_factory.mktemp("reported") / "vae2"
    shutil.copytree(vae_run, run)
    vaelab.denoise(run, noise="gaussian:0.3", n_images=50, out=run / "denoised.png", device="cpu")
    vaelab.cluster(run, out=run / "clusters.png", device="cpu")
    vaelab.evaluate(run, k=5, n_images=100, device="cpu", progress=False, quality=False)
    return run


def test_report_is_one_self_contained_page_with_every_figure(run_with_results: Path) -> None:
    result = vaelab.report(run_with_results, progress=False)
    page = Path(result["out"])
    assert page == run_with_results / "report.html"
    html = page.read_text()
    for title in ("Training curves", "Evaluation", "Samples", "Reconstructions", "Latent space",
                  "Decoded latent plane", "Interpolations", "Traversal"):  # fmt: skip
        assert title in result["sections"]
        assert f"<h2>{title}</h2>" in html
    images = embedded_images(html)
    assert len(images) >= 11
    assert "fitted to the latents of the training images" in html  # samples from the prior, then the fit
    assert (run_with_results / "latent_density.safetensors").is_file()
    for image in images:
        assert image.std() > 10  # no blank picture
    assert "src='http" not in html and "src='/" not in html  # nothing fetched from elsewhere
    # the settings, the per-epoch figures and what evaluate measured, as tables
    assert "train.latent_dim" not in html and "model.latent_dim" in html
    assert re.search(r"<td>nll</td><td class='num'>[0-9.]+</td>", html)
    # results saved in the run folder, with their figures
    assert "Saved result: vaelab denoise (denoised.json)" in result["sections"]
    assert "Saved result: vaelab cluster (clusters.json)" in result["sections"]
    assert re.search(r"<td>psnr.model</td><td class='num'>[0-9.]+</td>", html)


def test_figures_of_weights_the_run_has_since_replaced_are_marked_as_such(
    vae_run: Path, tmp_path: Path
) -> None:
    # `vaelab evaluate`, then more training: the report showed the old figures beside the new
    # weights' samples as if they were theirs
    run = tmp_path / "vae2"
    shutil.copytree(vae_run, run)
    vaelab.evaluate(run, k=2, n_images=20, device="cpu", progress=False, quality=False)
    vaelab.denoise(run, noise="gaussian:0.3", n_images=20, out=run / "denoised.png", device="cpu")
    measured = json.loads((run / "eval.json").read_text())
    assert measured["weights_epoch"] == 2 and len(measured["weights_sha256"]) == 64
    current = run_report.evaluation_section(run)
    assert "earlier weights" not in current.explanation
    assert ["weights_epoch", "2"] in current.table.rows and "weights_sha256" not in str(current.table.rows)
    vaelab.train(run, resume=True, epochs=3, progress=False)  # a better third epoch: new best weights
    assert checkpoint.weights_epoch(run) == 3
    stale = run_report.evaluation_section(run)
    assert "for earlier weights (epoch 2): the run has saved newer ones since (epoch 3)" in stale.explanation
    assert f"Run `vaelab evaluate {run}` again" in stale.explanation
    assert stale.table.rows == current.table.rows  # still shown, under that sentence
    # so are the results that denoise, cluster and anomaly score save in the run folder
    (record,) = run_report._saved_results(run, tmp_path)
    assert "for earlier weights (epoch 2)" in record.explanation and "weights_sha256" not in str(
        record.table.rows
    )
    vaelab.denoise(run, noise="gaussian:0.3", n_images=20, out=run / "denoised.png", device="cpu")
    (record,) = run_report._saved_results(run, tmp_path)
    assert record.explanation.endswith("wrote into the run folder.")


def test_report_of_a_run_without_evaluation_or_labels_says_what_is_missing(
    ae_run: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "ae2"  # the model and its history only (other tests add results to ae_run)
    run.mkdir()
    for name in ("config.json", "model.safetensors", "metrics.jsonl"):
        shutil.copy(ae_run / name, run / name)
    code, result, err = run_cli(["report", str(run), "-o", str(tmp_path / "ae.html")], capsys)
    assert code == 0 and Path(result["out"]) == tmp_path / "ae.html"
    html = (tmp_path / "ae.html").read_text()
    assert f"run `vaelab evaluate {run}`" in html
    assert not any(title.startswith("Saved result") for title in result["sections"])
    assert "expect few of them to look like the data" in html  # an AE has no prior
    # how far its codes sit from N(0, I) is said on the page, not in `vaelab sample`'s warning
    gap = vaelab.sample(run, n=4, out=tmp_path / "s.png", device="cpu")["prior_mismatch_nats"]
    assert f"codes sit {gap:.1f} nats from N(0, I)" in html and err == ""
    embedded_images(html)
    code, _, err = run_cli(["report", str(run), "-o", str(tmp_path / "ae.png")], capsys)
    assert code == 2 and "should end in .html" in err


def test_report_of_a_pixel_by_pixel_decoder_skips_what_needs_a_mean_image(tmp_path: Path) -> None:
    result = vaelab.report(PIXELCNN_RUN, out=tmp_path / "r.html", device="cpu", progress=False)
    assert "Traversal" not in result["sections"] and "Samples" in result["sections"]
    assert "draws pixel by pixel" in (tmp_path / "r.html").read_text()
