"""Settings: each written once, what "auto" resolves to, and the ranges that are refused."""

from __future__ import annotations

import dataclasses

import pytest

from vaelab import ModelConfig, TrainConfig, build_model
from vaelab.config import (
    DEFAULT_LR,
    DLOGISTIC_MEAN_SCALE,
    IMAGE_DEFAULTS,
    PIXELCNN_FREE_BITS,
    PIXELCNN_LR,
    setting_names,
    with_image_defaults,
)
from vaelab.errors import VaelabError


def test_every_setting_is_declared_once() -> None:
    assert setting_names(ModelConfig).isdisjoint(setting_names(TrainConfig))
    config = TrainConfig.from_settings(latent_dim=2, epochs=3, arch="mlp")
    assert (config.model_config.latent_dim, config.epochs, config.model_config.arch) == (2, 3, "mlp")
    assert TrainConfig.from_settings(**config.settings()) == config
    with pytest.raises(VaelabError, match="unknown setting colour"):
        TrainConfig.from_settings(colour="red")


def test_the_default_model_is_what_train_builds_by_default() -> None:
    # film waits for the images' channels: the trainer settles it once it has them (grey here)
    trained = TrainConfig().validate().resolved().model_config
    assert trained.film is None
    trained = trained.resolved()
    built = build_model(ModelConfig()).config
    assert built == trained
    assert (built.arch, built.hidden, built.latent_dim, built.decoder) == ("resnet", 512, 32, "factorized")


def test_build_model_leaves_its_config_alone() -> None:
    config = ModelConfig(decoder="auto", free_bits=None)
    before = dataclasses.replace(config)
    build_model(config)
    assert config == before


def test_conv_stages_follow_the_image_size() -> None:
    def stages(height: int, width: int, channels: int = 32) -> list[int]:
        return ModelConfig(image_height=height, image_width=width, channels=channels).conv_channels()

    assert stages(28, 28) == [32, 64]  # 28 -> 14 -> 7
    assert stages(64, 64) == [32, 64, 128]  # 64 -> 32 -> 16 -> 8
    assert stages(8, 8) == [32]
    assert stages(64, 64, channels=16) == [16, 32, 64]
    assert stages(1024, 1024, channels=16)[-1] == 128  # capped at 8 x channels
    assert ModelConfig(arch="mlp").conv_channels() == []


def test_auto_decoder_follows_binarization_and_refuses_models_without_a_likelihood() -> None:
    def decoder(**settings) -> str:
        return TrainConfig.from_settings(**settings).validate().resolved().model_config.decoder

    assert decoder(binarize="dynamic") == "pixelcnn"
    assert decoder(binarize="none") == "factorized"
    assert decoder(binarize="dynamic", model="ae") == "factorized"
    assert decoder(binarize="dynamic", loss="l2") == "factorized"
    with pytest.raises(VaelabError, match="decoder pixelcnn needs model vae"):
        TrainConfig.from_settings(decoder="pixelcnn", model="ae").validate()
    with pytest.raises(VaelabError, match="ar_channels must be at least 1"):
        TrainConfig.from_settings(ar_channels=0).validate()


def test_learning_rate_and_free_bits_follow_the_decoder_unless_given() -> None:
    def lr_and_free_bits(**settings) -> tuple[float | None, float | None]:
        config = TrainConfig.from_settings(**settings).validate().resolved()
        return config.lr, config.model_config.free_bits

    assert lr_and_free_bits(binarize="dynamic") == (PIXELCNN_LR, PIXELCNN_FREE_BITS)
    assert lr_and_free_bits(binarize="dynamic", decoder="factorized") == (DEFAULT_LR, 0.0)
    assert lr_and_free_bits(binarize="dynamic", lr=5e-4, free_bits=0.0) == (5e-4, 0.0)
    assert lr_and_free_bits(binarize="dynamic", objective="iwae")[1] == 0.0


def test_film_is_on_for_colour_conv_decoders_unless_set_and_off_in_runs_saved_before_it() -> None:
    def film(**settings) -> bool | None:
        return ModelConfig(**settings).validate().resolved().film

    assert film(image_channels=3) is True and film(image_channels=3, arch="conv") is True
    assert film(image_channels=1) is False and film(image_channels=3, arch="mlp") is False
    assert film(image_channels=3, film=False) is False and film(image_channels=1, film=True) is True
    with pytest.raises(VaelabError, match="film modulates the feature maps of a conv or resnet decoder"):
        ModelConfig(arch="mlp", film=True).validate()
    saved = ModelConfig(image_channels=3).resolved().to_dict()
    assert ModelConfig.from_dict(saved).film is True
    del saved["film"]  # a colour run saved before film existed was built without it
    assert ModelConfig.from_dict(saved).film is False


def test_the_mean_scale_defaults_to_dlogistic_only_and_is_off_in_runs_saved_before_it() -> None:
    def mean_scale(**settings) -> float | None:
        return TrainConfig.from_settings(**settings).validate().resolved().mean_scale

    assert mean_scale(loss="dlogistic") == DLOGISTIC_MEAN_SCALE == pytest.approx(0.0498, abs=1e-4)
    assert (
        mean_scale(loss="dlogistic", mean_scale=0.0) == 0.0
        and mean_scale(loss="dlogistic", mean_scale=0.1) == 0.1
    )
    assert mean_scale(loss="bernoulli") == 0.0 and mean_scale(loss="l2") == 0.0
    with pytest.raises(VaelabError, match="mean_scale applies to --loss dlogistic"):
        mean_scale(loss="l2", mean_scale=0.05)
    with pytest.raises(VaelabError, match="mean_scale must be in"):
        mean_scale(loss="dlogistic", mean_scale=-1.0)
    saved = TrainConfig.from_settings(loss="dlogistic").resolved().to_dict()
    assert TrainConfig.from_dict(saved).mean_scale == DLOGISTIC_MEAN_SCALE
    del saved["mean_scale"]  # a run saved before the setting existed trained without it
    assert TrainConfig.from_dict(saved).mean_scale == 0.0


def test_colour_and_large_images_defaults_fill_only_the_settings_not_given() -> None:
    colour = with_image_defaults({"dataset": "shapes", "batch_size": 8}, (3, 64, 64))
    assert colour["batch_size"] == 8 and colour["arch"] == "conv" and colour["loss"] == "dlogistic"
    assert with_image_defaults({"batch_size": 8}, (1, 28, 28)) == {"batch_size": 8}  # small grey: as given
    assert with_image_defaults({}, (1, 32, 32)) == {}  # up to SMALL_GREY_PIXELS
    assert with_image_defaults({}, (1, 32, 33)) == IMAGE_DEFAULTS  # larger grey images: like colour
    assert with_image_defaults({}, (3, 16, 16)) == IMAGE_DEFAULTS  # colour images of any size
    binarized = {"binarize": "dynamic"}  # 0/1 sub-pixels: the Bernoulli likelihood is the exact one
    assert with_image_defaults(binarized, (3, 64, 64)) == binarized
    assert with_image_defaults(binarized, (1, 64, 64)) == binarized
    # every default is a valid setting, in range
    config = TrainConfig.from_settings(**with_image_defaults({}, (3, 64, 64))).validate()
    assert all(config.settings()[key] == value for key, value in IMAGE_DEFAULTS.items())
    assert config.settings()["loss"] != TrainConfig().settings()["loss"]  # they differ from grey's
