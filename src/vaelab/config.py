"""Settings as plain dataclasses: what the user chooses (TrainConfig) and what a model is built
from (ModelConfig). Both round-trip through JSON; the CLI derives its flags from TrainConfig."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from vaelab.errors import VaelabError

MODELS = ("ae", "vae")
ARCHS = ("conv", "resnet", "mlp")
LOSSES = ("bernoulli", "l2", "l1")
BINARIZE = ("none", "dynamic", "static")
DEVICES = ("auto", "cpu", "cuda", "mps")
OBJECTIVES = ("elbo", "iwae")
DECODERS = ("auto", "factorized", "pixelcnn")
SCHEDULES = ("constant", "cosine")


PIXELCNN_FREE_BITS = 0.25  # nats per latent dimension: 8 of the default 32-D latent's are free
DEFAULT_LR, PIXELCNN_LR = 1e-3, 2e-3  # Adam; a pixelcnn decoder learns far faster with the larger one

# The small net and plain schedule that `vaelab train` defaulted to before its quality defaults:
# what the demo and the benchmarks pin, so their figures and time budgets do not move with them.
PLAIN_TRAINING: dict[str, Any] = {
    "hidden": 0,
    "ema": 0.0,
    "kl_warmup_epochs": 0,
    "lr_schedule": "constant",
    "lr_warmup_epochs": 0,
    "decoder": "factorized",
}


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    """A dataclass field whose metadata carries the CLI help text and allowed values."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network: stored as the "model" part of config.json."""

    model: str = "vae"  # "ae": deterministic bottleneck; "vae": Gaussian posterior + KL to N(0, I)
    arch: str = "conv"  # "conv": strided convs; "resnet": plus residual blocks; "mlp": one hidden layer
    latent_dim: int = 16  # size of the bottleneck vector z
    loss: str = "bernoulli"  # pixel loss summed over pixels: bernoulli (BCE on logits), l2, l1
    beta: float = 1.0  # weight of the KL term (VAE only); 1 is the plain ELBO
    objective: str = "elbo"  # "elbo" (with beta, free bits) or "iwae" (importance-weighted bound)
    iw_samples: int = 5  # K of the iwae objective
    free_bits: float = 0.0  # floor, in nats, on each latent dimension's batch-averaged KL (0 = off)
    image_channels: int = 1  # taken from the data
    image_height: int = 28
    image_width: int = 28
    conv_channels: list[int] = field(default_factory=list)  # per stride-2 stage; [] = from image size
    mlp_hidden: int = 400  # hidden units of the mlp arch (400 as in the PyTorch VAE example)
    hidden: int = 0  # conv/resnet: a dense layer of this many units around the latent (0 = none)
    decoder: str = "factorized"  # "factorized": pixels independent given z; "pixelcnn": autoregressive
    ar_channels: int = 16  # pixelcnn: channels of the masked convolutions (and of the features they read)
    ar_layers: int = 2  # pixelcnn: masked 3x3 layers after the first 7x7 one

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "model config")


@dataclass
class TrainConfig:
    """What `vaelab train` takes; each field is one CLI flag (underscores become dashes)."""

    model: str = _opt("vae", "ae = plain autoencoder, vae = variational autoencoder", MODELS)
    arch: str = _opt(
        "resnet",
        "network: conv (strided convolutions), resnet (plus residual blocks) or mlp (784-400-latent)",
        ARCHS,
    )
    dataset: str = _opt(
        "mnist-mini",
        "mnist-mini (embedded, offline), mnist, fashion-mnist, kmnist, or folder:PATH (your images)",
    )
    data_dir: str | None = _opt(None, "folder holding the IDX files of mnist/fashion-mnist/kmnist")
    image_size: int | None = _opt(None, "resize every image to SIZE x SIZE (needed for mixed sizes)")
    latent_dim: int = _opt(32, "size of the latent vector (2 to plot it, 16-64 for quality)")
    loss: str = _opt("bernoulli", "pixel loss summed over pixels: bernoulli (cross-entropy), l2, l1", LOSSES)
    beta: float = _opt(1.0, "weight of the KL term of a VAE (1 = the plain VAE, >1 = beta-VAE)")
    binarize: str = _opt(
        "none", "none, dynamic (fresh 0/1 draw each time an image is seen) or static (one draw)", BINARIZE
    )
    epochs: int = _opt(45, "passes over the training images")
    batch_size: int = _opt(128, "images per optimizer step")
    lr: float | None = _opt(
        None, f"Adam learning rate (default {DEFAULT_LR:g}; {PIXELCNN_LR:g} with --decoder pixelcnn)"
    )
    val_fraction: float = _opt(0.1, "share of the training split held out for validation")
    seed: int = _opt(0, "seed of every random draw (weights, shuffling, sampling, binarization)")
    device: str = _opt("auto", "auto picks CUDA, then Apple MPS, then CPU", DEVICES)
    amp: bool = _opt(False, "bfloat16 mixed precision (CUDA only)")
    channels: int = _opt(32, "conv/resnet: channels of the first stride-2 stage; each next stage doubles")
    hidden: int = _opt(512, "conv/resnet: units of a dense layer between the conv features and the latent")
    decoder: str = _opt(
        "auto",
        "factorized (pixels independent given z), pixelcnn (each pixel also sees those above and to its "
        "left: far better likelihoods on 0/1 images, slower to draw) or auto (pixelcnn for a VAE on "
        "--binarize'd images, else factorized)",
        DECODERS,
    )
    ar_channels: int = _opt(16, "pixelcnn: channels of its masked convolutions")
    ar_layers: int = _opt(2, "pixelcnn: masked 3x3 layers after its first 7x7 one")
    objective: str = _opt(
        "elbo", "elbo (the VAE bound, with --beta) or iwae (K-sample importance-weighted bound)", OBJECTIVES
    )
    iw_samples: int = _opt(5, "K, the samples per image of the iwae objective")
    kl_warmup_epochs: int = _opt(
        10, "raise the KL weight linearly from 0 to --beta over this many epochs (0 = off)"
    )
    free_bits: float | None = _opt(
        None,
        "nats of KL per latent dimension that cost nothing, so units stay in use (0 = off; "
        f"default {PIXELCNN_FREE_BITS} with --decoder pixelcnn, which otherwise learns to ignore z, else 0)",
    )
    lr_schedule: str = _opt("cosine", "cosine decay to 0 over --epochs, or constant", SCHEDULES)
    lr_warmup_epochs: int = _opt(
        2,
        "raise the learning rate linearly from near 0 to --lr over this many epochs (0 = off): large "
        "first steps can leave a VAE's latent unused for good",
    )
    ema: float = _opt(
        0.999, "keep an exponential moving average of the weights with this decay (e.g. 0.999; 0 = off)"
    )
    patience: int = _opt(0, "stop when the validation loss has not improved for this many epochs (0 = never)")
    classes: str | None = _opt(None, "train only on these class labels, comma-separated (e.g. 0,1,2,3)")
    noise: str | None = _opt(
        None,
        "train a denoiser: corrupt inputs with gaussian:SIGMA, salt-pepper:P or mask:FRACTION, score clean",
    )

    def validate(self) -> TrainConfig:
        """Raise VaelabError naming the first out-of-range setting; return self."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise VaelabError(f"--{_flag(f.name)} {value!r} is not one of: {', '.join(choices)}")
        positive = {"latent_dim": self.latent_dim, "epochs": self.epochs, "batch_size": self.batch_size}
        if self.image_size is not None:
            positive["image_size"] = self.image_size
        for name, value in positive.items():
            if value < 1:
                raise VaelabError(f"--{_flag(name)} must be at least 1, got {value}")
        if self.channels < 1 or self.hidden < 0:
            raise VaelabError(
                f"--channels must be at least 1 and --hidden zero or more, got {self.channels} and {self.hidden}"
            )
        if self.lr is not None and not self.lr > 0:
            raise VaelabError(f"--lr must be positive, got {self.lr}")
        if not self.beta >= 0:
            raise VaelabError(f"--beta must be zero or positive, got {self.beta}")
        if self.iw_samples < 1:
            raise VaelabError(f"--iw-samples must be at least 1, got {self.iw_samples}")
        for name in ("kl_warmup_epochs", "lr_warmup_epochs", "patience"):
            if getattr(self, name) < 0:
                raise VaelabError(f"--{_flag(name)} must be zero or positive, got {getattr(self, name)}")
        if not 0 <= self.ema < 1:
            raise VaelabError(f"--ema must be in [0, 1) (e.g. 0.999; 0 = off), got {self.ema}")
        if self.free_bits is not None and not self.free_bits >= 0:
            raise VaelabError(f"--free-bits must be zero or positive, got {self.free_bits}")
        if self.objective == "iwae" and (self.model != "vae" or self.beta != 1 or self.free_bits):
            raise VaelabError("--objective iwae needs --model vae with --beta 1 and no --free-bits")
        if self.ar_channels < 1 or self.ar_layers < 0:
            raise VaelabError(
                f"--ar-channels must be at least 1 and --ar-layers zero or more, got {self.ar_channels} and {self.ar_layers}"
            )
        if self.decoder == "pixelcnn" and (self.model != "vae" or self.loss != "bernoulli"):
            raise VaelabError(
                "--decoder pixelcnn needs --model vae and --loss bernoulli (it models each pixel's probability); "
                "use --decoder factorized"
            )
        if self.classes is not None:
            self.class_list()
        if self.noise is not None:
            from vaelab.data.noise import parse_noise

            parse_noise(self.noise)
        if not 0 < self.val_fraction < 1:
            raise VaelabError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        return self

    def class_list(self) -> list[int] | None:
        """The labels of --classes as integers (None: every class)."""
        if self.classes is None:
            return None
        try:
            labels = sorted({int(part) for part in self.classes.split(",") if part.strip()})
        except ValueError:
            raise VaelabError(
                f"--classes {self.classes!r} must be comma-separated integers, e.g. 0,1,2"
            ) from None
        if not labels:
            raise VaelabError("--classes names no class; give e.g. 0,1,2")
        return labels

    def model_config(self, image_shape: tuple[int, int, int]) -> ModelConfig:
        """The ModelConfig these settings build for images of shape (C, H, W)."""
        from vaelab.nets import default_conv_channels

        channels, height, width = image_shape
        return ModelConfig(
            model=self.model,
            arch=self.arch,
            latent_dim=self.latent_dim,
            loss=self.loss,
            beta=self.beta,
            objective=self.objective,
            iw_samples=self.iw_samples,
            free_bits=self.resolved_free_bits(),
            image_channels=channels,
            image_height=height,
            image_width=width,
            conv_channels=default_conv_channels(height, width, self.channels) if self.arch != "mlp" else [],
            hidden=self.hidden,
            decoder=self.resolved_decoder(),
            ar_channels=self.ar_channels,
            ar_layers=self.ar_layers,
        )

    def resolved_free_bits(self) -> float:
        """--free-bits, or when not given: PIXELCNN_FREE_BITS for an elbo-trained pixelcnn decoder
        (it would otherwise model the pixels alone and leave z unused: posterior collapse), else 0."""
        if self.free_bits is not None:
            return self.free_bits
        return (
            PIXELCNN_FREE_BITS if self.resolved_decoder() == "pixelcnn" and self.objective == "elbo" else 0.0
        )

    def resolved_lr(self) -> float:
        """--lr, or when not given: PIXELCNN_LR with a pixelcnn decoder, else DEFAULT_LR."""
        if self.lr is not None:
            return self.lr
        return PIXELCNN_LR if self.resolved_decoder() == "pixelcnn" else DEFAULT_LR

    def resolved_decoder(self) -> str:
        """What --decoder auto means for these settings: pixelcnn for a VAE with the Bernoulli
        likelihood on binarized images (where that likelihood is exact), else factorized."""
        if self.decoder != "auto":
            return self.decoder
        binary_vae = self.model == "vae" and self.loss == "bernoulli" and self.binarize != "none"
        return "pixelcnn" if binary_vae else "factorized"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, "training settings")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a config dataclass (the module uses postponed annotations)."""
    return typing.get_type_hints(cls)


def _from_dict(cls: Any, data: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise VaelabError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return cls(**data)
