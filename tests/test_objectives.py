"""Each training objective and schedule on its defining property."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab import ModelConfig, build_model, training
from vaelab.checkpoint import read_metrics

FAST = {"arch": "mlp", "latent_dim": 4, "device": "cpu", "progress": False, "batch_size": 256}


def _mean_loss(model, x: torch.Tensor, repeats: int, seed: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        losses = torch.stack([model(x, generator=g).loss for _ in range(repeats)]).double()
    return float(losses.mean()), float(losses.std() / math.sqrt(repeats))


def test_iwae_with_one_sample_is_the_elbo_and_more_samples_tighten_it() -> None:
    torch.manual_seed(0)
    elbo_model = build_model(ModelConfig(arch="mlp", latent_dim=3))
    x = torch.rand(32, 1, 28, 28)
    iwae_1 = build_model(ModelConfig(arch="mlp", latent_dim=3, objective="iwae", iw_samples=1))
    iwae_20 = build_model(ModelConfig(arch="mlp", latent_dim=3, objective="iwae", iw_samples=20))
    for m in (iwae_1, iwae_20):
        m.load_state_dict(elbo_model.state_dict())
    elbo, elbo_se = _mean_loss(elbo_model, x, 400, 1)
    one, one_se = _mean_loss(iwae_1, x, 400, 2)
    twenty, twenty_se = _mean_loss(iwae_20, x, 400, 3)
    assert abs(one - elbo) < 4 * math.hypot(one_se, elbo_se)  # same expectation, other estimator
    assert twenty < one - 4 * math.hypot(one_se, twenty_se)  # a tighter bound: a lower loss


def test_free_bits_make_kl_below_the_floor_cost_exactly_the_floor() -> None:
    model = build_model(ModelConfig(arch="mlp", latent_dim=3, free_bits=1000.0))
    out = model(torch.rand(8, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert (out.kl < 1000).all()
    torch.testing.assert_close(out.loss, out.recon.mean() + 3 * 1000.0)
    mu_grad = torch.autograd.grad(
        out.loss - out.recon.mean(), model.encoder.layers[-1].weight, allow_unused=True
    )[0]
    assert mu_grad is None or mu_grad.abs().max() == 0  # no pull towards the prior below the floor


def test_kl_weight_argument_replaces_beta() -> None:
    model = build_model(ModelConfig(arch="mlp", latent_dim=3, beta=4.0))
    x = torch.rand(8, 1, 28, 28)
    out = model(x, generator=torch.Generator().manual_seed(0), kl_weight=0.25)
    torch.testing.assert_close(out.loss, (out.recon + 0.25 * out.kl).mean())


def test_warmup_and_cosine_factors() -> None:
    assert [training.warmup_factor(s, 10) for s in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]
    assert training.warmup_factor(3, 0) == 1.0
    assert training.lr_factor("cosine", 0, 100) == 1.0
    assert training.lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert training.lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert training.lr_factor("constant", 70, 100) == 1.0
    # lr warm-up: step s of a 4-step ramp runs at (s + 1) / 4, times the schedule's own factor.
    assert [training.lr_factor("constant", s, 100, 4) for s in (0, 1, 3, 50)] == [0.25, 0.5, 1.0, 1.0]
    cosine_at_1 = 0.5 * (1.0 + math.cos(math.pi * 1 / 100))
    assert training.lr_factor("cosine", 1, 100, 4) == pytest.approx(0.5 * cosine_at_1)


def test_a_run_with_warmup_and_cosine_records_both(tmp_path: Path) -> None:
    vaelab.train(
        tmp_path / "r",
        epochs=3,
        kl_warmup_epochs=2,
        lr_schedule="cosine",
        lr_warmup_epochs=0,
        beta=2.0,
        **FAST,
    )
    rows = read_metrics(tmp_path / "r")
    weights = [row["kl_weight"] for row in rows]
    assert 0 < weights[0] < 1.0 < weights[1] < 2.0 and weights[2] == 2.0
    lrs = [row["lr"] for row in rows]
    assert 1e-3 > lrs[0] > lrs[1] > lrs[2] > 0


def test_the_learning_rate_ramps_up_over_its_warmup_epochs(tmp_path: Path) -> None:
    vaelab.train(tmp_path / "r", epochs=3, lr=1e-3, lr_warmup_epochs=2, lr_schedule="constant", **FAST)
    lrs = [row["lr"] for row in read_metrics(tmp_path / "r")]  # each at its epoch's last step
    assert lrs == pytest.approx([0.5e-3, 1e-3, 1e-3])  # halfway up after epoch 1 of 2, then flat


def test_iwae_trains_and_reports_a_bound_tighter_than_its_elbo(tmp_path: Path) -> None:
    result = vaelab.train(tmp_path / "r", epochs=2, objective="iwae", iw_samples=5, **FAST)
    assert result["val_loss"] < result["val_recon"] + result["val_kl"]


def test_early_stopping_keeps_the_best_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = training.mean_losses
    val_losses = iter([300.0, 200.0, 250.0, 260.0, 270.0, 280.0])

    def scripted(*args, **kwargs):
        real(*args, **kwargs)
        value = next(val_losses)
        return {"loss": value, "recon": value, "kl": 0.0}

    monkeypatch.setattr(training, "mean_losses", scripted)
    result = vaelab.train(tmp_path / "r", epochs=6, patience=2, **FAST)
    assert result["epochs"] == 4 and result["best_epoch"] == 2 and result["best_val_loss"] == 200.0
    best = load_file(str(tmp_path / "r" / "model.safetensors"))
    last = {
        k.removeprefix("model."): v
        for k, v in load_file(str(tmp_path / "r" / "training_state.safetensors")).items()
        if k.startswith("model.")
    }
    assert set(best) == set(last) and not all(torch.equal(best[k], last[k]) for k in best)
    loaded = vaelab.load(tmp_path / "r")
    assert all(torch.equal(loaded.state_dict()[k], best[k]) for k in best)


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_a_collapsed_latent_is_warned_about_once_after_the_lr_warmup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, model: str
) -> None:
    real = training.mean_losses
    val_kls = iter([0.5, 0.4, 0.3])  # nats per image: below COLLAPSED_KL from the first epoch on

    def scripted(*args, **kwargs):
        losses = real(*args, **kwargs)
        return {**losses, "kl": next(val_kls)}

    monkeypatch.setattr(training, "mean_losses", scripted)
    with caplog.at_level("WARNING", logger="vaelab.training"):
        vaelab.train(tmp_path / "r", epochs=3, lr_warmup_epochs=1, model=model, **FAST)
    warnings = [r.getMessage() for r in caplog.records if "posterior collapse" in r.getMessage()]
    if model == "ae":  # an AE has no KL to collapse
        assert warnings == []
    else:  # not during the warm-up (epoch 1), then once, not again at epoch 3
        assert len(warnings) == 1 and warnings[0].startswith("epoch 2: validation KL is 0.40")


def test_iwae_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(vaelab.VaelabError, match="objective iwae needs model vae"):
        vaelab.train(tmp_path / "r", objective="iwae", beta=2.0, **FAST)
    with pytest.raises(vaelab.VaelabError, match="iw_samples must be at least 1"):
        vaelab.train(tmp_path / "r", objective="iwae", iw_samples=0, **FAST)


def test_the_iwae_objective_is_the_evaluation_estimator() -> None:
    from vaelab.importance import importance_log_weights, log_mean_exp

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", latent_dim=3, objective="iwae", iw_samples=7))
    x = (torch.rand(6, 1, 28, 28) > 0.5).float()
    with torch.no_grad():
        loss = model(x, generator=torch.Generator().manual_seed(4)).loss
        mu, log_var = model.encode(x)
        log_w, _, _ = importance_log_weights(
            x,
            mu,
            log_var,
            lambda xs, z: -model.reconstruction_loss(z, xs),
            7,
            torch.Generator().manual_seed(4),
        )
    torch.testing.assert_close(loss, -log_mean_exp(log_w).mean())
