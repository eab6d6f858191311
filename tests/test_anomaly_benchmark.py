"""The anomaly benchmark end to end on one class."""

from __future__ import annotations

import json

from vaelab.cli import main


def test_benchmark_reports_every_method_per_class(capsys) -> None:
    code = main(["anomaly", "benchmark", "--classes", "0", "--steps", "10", "--arch", "mlp", "--protocol",
                 "one-class", "--json", "--quiet"])  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    methods = {"ae", "vae", "vae_recon", "vae_knn", "vae_recon_knn", "pca", "pca_best", "iforest", "ae_ssim",
               "vae_ssim", "vae_ssim_knn", "pca_ssim_best"}  # fmt: skip
    assert code == 0 and set(result["auroc"]) == methods == set(result["mean_auroc"])
    for method, per_class in result["auroc"].items():
        assert list(per_class) == ["0"] and 0 <= per_class["0"] <= 1
        assert result["mean_auroc"][method] == per_class["0"]
    assert result["auroc"]["pca"]["0"] > 0.8  # zeros are easy to tell from the other digits
    by_components = result["pca_mean_auroc_by_components"]
    assert set(by_components) == {"8", "16", "32", "64"}
    assert result["mean_auroc"]["pca_best"] == max(by_components.values())
    assert by_components[str(result["pca_best_components"])] == max(by_components.values())
    by_components = result["pca_ssim_mean_auroc_by_components"]
    assert set(by_components) == {"8", "16", "32", "64"} and result["auroc"]["pca_ssim_best"]["0"] > 0.8
    assert result["mean_auroc"]["pca_ssim_best"] == max(by_components.values())
    assert by_components[str(result["pca_ssim_best_components"])] == max(by_components.values())
    assert main(["anomaly", "benchmark", "--classes", "12", "--quiet"]) == 2
