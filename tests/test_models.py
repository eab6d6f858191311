"""Models: any image size, objectives on their defining properties, the pixelcnn decoder hiding no draws."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaelab import ModelConfig, build_model
from vaelab.distributions import bernoulli_nll
from vaelab.errors import VaelabError

FAST = {"arch": "mlp", "latent_dim": 4, "device": "cpu", "progress": False, "batch_size": 256}


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from(["ae", "vae"]),
    st.sampled_from(["conv", "resnet", "mlp"]),
    st.integers(5, 70),
    st.integers(5, 70),
    st.sampled_from([1, 3]),
    st.sampled_from([0, 16]),
)
def test_any_image_size_round_trips_to_its_own_shape(
    model: str, arch: str, h: int, w: int, c: int, hidden: int
) -> None:
    config = ModelConfig(
        model=model, arch=arch, latent_dim=3, image_channels=c, image_height=h, image_width=w, hidden=hidden,
        channels=8,
    )  # fmt: skip
    net = build_model(config)
    x = torch.rand(2, c, h, w)
    out = net(x, generator=torch.Generator().manual_seed(0))
    assert out.reconstruction is not None and out.reconstruction.shape == (2, c, h, w)
    assert out.z.shape == (2, 3)
    decoded = net.decode(out.z)
    assert decoded.shape == (2, c, h, w) and decoded.min() >= 0 and decoded.max() <= 1


@pytest.mark.parametrize("model", ["ae", "vae"])
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m: m.encode(torch.zeros(2, 3, 20, 24, dtype=torch.uint8)),
            "images must be floats in [0, 1], got uint8",
        ),
        (lambda m: m.encode(torch.rand(3, 20, 24)), "got shape [3, 20, 24]; add a batch dimension (x[None])"),
        (
            lambda m: m.embed(torch.rand(2, 3, 24, 20)),
            "batch of 3x20x24 images [B, C, H, W], got shape [2, 3, 24, 20]; resize",
        ),
        (
            lambda m: m(torch.rand(2, 1, 20, 24)),
            "got shape [2, 1, 20, 24]; convert them to RGB, 3 channel(s)",
        ),
        (
            lambda m: m.decode(torch.randn(2, 5)),
            "latent has 4 numbers, so z must be [B, 4], got shape [2, 5]",
        ),
        (lambda m: m.generate(torch.randn(4)), "got shape [4]; add a batch dimension (z[None])"),
        (lambda m: m.decode(torch.zeros(2, 4, dtype=torch.int64)), "latents must be floats, got int64"),
        (
            lambda m: m.embed(torch.full((2, 3, 20, 24), 255.0)),
            "images must be floats in [0, 1], got values from 255 to 255; divide 8-bit images by 255",
        ),
        (
            lambda m: m.embed(torch.rand(2, 3, 20, 24) * 2 - 1),  # normalized to [-1, 1]
            "and undo any normalization",
        ),
        (lambda m: m.embed(torch.full((2, 3, 20, 24), float("nan"))), "got values from nan to nan"),
        (
            lambda m: m.embed(torch.zeros(2, 3, 20, 24).numpy()),
            "images must be a torch.Tensor [B, C, H, W] of floats in [0, 1], got ndarray; pass torch.from_numpy",
        ),
    ],
)
def test_wrong_inputs_are_named_with_their_fix(model: str, call, message: str) -> None:
    config = ModelConfig(
        model=model, arch="conv", latent_dim=4, image_channels=3, image_height=20, image_width=24
    )
    net = build_model(config)
    with pytest.raises(VaelabError) as raised:
        call(net)
    assert message in str(raised.value)


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_embeddings_of_images_in_0_1_pass_the_value_check(model: str) -> None:
    config = ModelConfig(
        model=model, arch="mlp", latent_dim=4, image_channels=1, image_height=8, image_width=8
    )
    net = build_model(config)
    edges = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8), torch.full((1, 8, 8), 1 + 1e-4)])
    assert net.embed(edges).shape == (3, 4) and net.embed(torch.zeros(0, 1, 8, 8)).shape == (0, 4)


def test_group_norm_adds_a_scale_and_shift_per_channel_of_every_hidden_feature_map() -> None:
    settings = {"model": "vae", "arch": "resnet", "latent_dim": 4, "channels": 8, "image_channels": 3,
                "image_height": 32, "image_width": 32, "loss": "dlogistic"}  # fmt: skip
    plain, normed = build_model(ModelConfig(**settings)), build_model(ModelConfig(**settings, norm="group"))
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.modules())
    # 32 px: stages [8, 16]. Encoder: after 2 convs + 2 per residual block; decoder: 2 per residual
    # block and after the inner transposed conv (not the output): 8+8+8 + 16+16+16 and 16+16 + 8+8 + 8.
    norm_channels = (8 * 3 + 16 * 3) + (16 * 2 + 8 * 2 + 8)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(normed) - count(plain) == 2 * norm_channels
    x = torch.rand(2, 3, 32, 32)
    assert torch.isfinite(normed(x, generator=torch.Generator().manual_seed(0)).loss)


def test_film_starts_as_the_plain_decoder_and_scales_every_hidden_feature_map() -> None:
    settings = {"model": "vae", "arch": "conv", "latent_dim": 4, "channels": 8, "hidden": 0, "image_channels": 3,
                "image_height": 32, "image_width": 32, "loss": "dlogistic"}  # fmt: skip
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**settings, film=False))
    torch.manual_seed(0)
    film = build_model(ModelConfig(**settings, film=True))
    assert film.decoder.film is not None and plain.decoder.film is None
    # 32 px: stages [8, 16]; the decoder modulates the 16-channel start map and the 8-channel
    # hidden stage: a scale and a shift per channel, each a linear function of the 4-D z
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(film) - count(plain) == 2 * (16 + 8) * (4 + 1)
    z = torch.randn(5, 4)
    torch.testing.assert_close(film.decoder(z), plain.decoder(z))  # gamma = beta = 0 at the start
    # gamma = -1 on the last hidden stage zeroes what the output convolution sees: its bias is all
    # that is left, the same at every pixel
    with torch.no_grad():
        film.decoder.film.bias[16 : 16 + 8] = -1.0
    out = film.decoder(z)
    bias = film.decoder.deconvs[-1].bias
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out))
    with torch.no_grad():  # a scale that depends on z changes the output with z
        film.decoder.film.bias.zero_()
        film.decoder.film.weight.normal_()
    assert not torch.allclose(film.decoder(z), plain.decoder(z))


def test_hidden_layer_adds_exactly_its_dense_weights() -> None:
    plain = build_model(ModelConfig(model="vae", arch="conv", latent_dim=8, hidden=0))
    wide = build_model(ModelConfig(model="vae", arch="conv", latent_dim=8, hidden=100))
    flat = 64 * 7 * 7  # the encoder's conv features, and the decoder's first feature map
    # encoder: flat->16 becomes flat->100->16; decoder: 8->flat becomes 8->100->flat
    extra = (
        (flat * 100 + 100 + 100 * 16 + 16)
        - (flat * 16 + 16)
        + (8 * 100 + 100 + 100 * flat + flat)
        - (8 * flat + flat)
    )
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(wide) - count(plain) == extra


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_vae_loss_is_recon_plus_beta_kl_averaged_over_the_batch(beta: float) -> None:
    net = build_model(ModelConfig(model="vae", arch="conv", channels=8, hidden=0, latent_dim=4, beta=beta))
    out = net(torch.rand(5, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.loss, (out.recon + beta * out.kl).mean())
    assert (out.kl > 0).all()
    mu, log_var = net.encode(torch.rand(5, 1, 28, 28))
    assert mu.shape == log_var.shape == (5, 4)


def test_ae_has_no_kl_and_encodes_to_one_tensor() -> None:
    net = build_model(ModelConfig(model="ae", arch="conv", channels=8, hidden=0, latent_dim=4, loss="l2"))
    x = torch.rand(5, 1, 28, 28)
    out = net(x)
    assert torch.equal(out.kl, torch.zeros(5)) and out.mu is None
    torch.testing.assert_close(out.loss, ((out.reconstruction - x) ** 2).flatten(1).sum(1).mean())
    torch.testing.assert_close(net.encode(x), out.z)


def test_denoising_target_is_what_the_loss_compares_with() -> None:
    net = build_model(ModelConfig(model="ae", arch="conv", channels=8, hidden=0, latent_dim=4, loss="l1"))
    noisy, clean = torch.rand(3, 1, 28, 28), torch.zeros(3, 1, 28, 28)
    out = net(noisy, target=clean)
    torch.testing.assert_close(out.recon, out.reconstruction.flatten(1).sum(1))


def test_mlp_vae_matches_the_pytorch_example_size() -> None:
    net = build_model(ModelConfig(model="vae", arch="mlp", latent_dim=20))
    # 784-400-(20+20) encoder, 20-400-784 decoder: the PyTorch VAE example's 652,824 parameters.
    assert sum(p.numel() for p in net.parameters()) == 652_824


def test_a_pixelcnn_vae_scores_decodes_and_samples_any_image_size() -> None:
    config = ModelConfig(arch="conv", hidden=0, decoder="pixelcnn", image_height=11, image_width=9)
    model = build_model(config).eval()
    x = (torch.rand(4, 1, 11, 9) > 0.5).float()
    out = model(x)
    assert out.recon.shape == (4,) and torch.isfinite(out.loss)
    mu, _ = model.encode(x)
    torch.testing.assert_close(model.reconstruction_loss(mu, x), bernoulli_nll(model.logits(mu, x), x))
    with pytest.raises(VaelabError, match="no closed-form mean image"):
        model.decode(mu)  # no hidden draws: the caller asks for them
    mean = model.decode(mu, draws=4, generator=torch.Generator().manual_seed(0))
    assert mean.shape == x.shape
    assert torch.equal(mean, model.decode(mu, draws=4, generator=torch.Generator().manual_seed(0)))
    assert ((mean * 4) - (mean * 4).round()).abs().max() < 1e-5  # an average of four 0/1 draws
    first = model.sample(4, torch.Generator().manual_seed(3))
    again = model.sample(4, torch.Generator().manual_seed(3))
    assert first.shape == x.shape and torch.equal(first, again)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(VaelabError, match="no closed-form mean"):
        model.sample(4, draw=False)


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
