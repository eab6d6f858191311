"""Settings as plain dataclasses, each written once with its default, help text and allowed values.

`ModelConfig` is everything a network is built from (stored as the "model" part of config.json);
`TrainConfig` is how it is trained, and holds the ModelConfig. The CLI derives its `train` flags
from both; `vaelab.train(out, latent_dim=2, epochs=20)` takes the same names. Reading files saved
by earlier releases is checkpoint.py's job.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vaelab.errors import VaelabError

MODELS = ("ae", "vae")
ARCHS = ("conv", "resnet", "mlp")
LOSSES = ("bernoulli", "dlogistic", "l2", "l1")
BINARIZE = ("none", "dynamic", "static")
DEVICES = ("auto", "cpu", "cuda", "mps")
OBJECTIVES = ("elbo", "iwae")
DECODERS = ("auto", "factorized", "pixelcnn")
SCHEDULES = ("constant", "cosine")
LOGGERS = ("none", "tensorboard", "mlflow")
PRECISIONS = ("fp32", "bf16", "fp16")
NORMS = ("none", "group")

PIXELCNN_FREE_BITS = 0.25  # nats per latent dimension: 8 of the default 32-D latent's are free
DEFAULT_LR, PIXELCNN_LR = 1e-3, 2e-3  # Adam; a pixelcnn decoder learns far faster with the larger one
# Images with more pixels than this train at half the default learning rate: the default VAE at
# 128 px spiked at epoch 4 at 1e-3 and trained 12 epochs without a spike at 5e-4 (docs/benchmarks.md)
LARGE_IMAGE_PIXELS = 64 * 64
# --mean-scale's default with --loss dlogistic: e^-3 ~ 0.05, the scale an untrained decoder starts
# at (about 13 of 256 levels); on 64 px shapes it took a conv VAE from 19.6 to 26.1 dB (docs/benchmarks.md)
DLOGISTIC_MEAN_SCALE = math.exp(-3.0)
MAX_FEATURE_SIZE = 8  # conv nets stop downsampling once the shorter side is at most this many pixels

# The small conv net and plain schedule that `vaelab train` defaulted to before its quality
# defaults: what the demo, the anomaly benchmark, the throughput benchmark and the tests pin, so
# their figures and time budgets do not move when the defaults do.
PLAIN_TRAINING: dict[str, Any] = {
    "arch": "conv",
    "hidden": 0,
    "decoder": "factorized",
    "loss": "bernoulli",
    "binarize": "none",
    "batch_size": 128,
    "lr": 1e-3,
    "lr_schedule": "constant",
    "lr_warmup_epochs": 0,
    "kl_warmup_epochs": 0,
    "ema": 0.0,
    "film": False,
}

# What colour images, and grey ones larger than SMALL_GREY_PIXELS, train with where a setting names
# no value, unless binarized (flags and keyword arguments win; a resumed run keeps what it recorded).
# The dataclass defaults suit small grey images such as the digits they were tuned on; 45 epochs of
# their resnet on 20,000 colour images of 64 px take over an hour on a CPU, where this conv VAE with
# the discretized logistic reaches 26 dB PSNR on 64 px shapes in about 9 minutes on 2 CPU cores. On
# a folder of 3,000 grey 64 px images it reached 33.5 dB in 11 minutes where the grey defaults
# reached 26.3 dB in 22 (docs/benchmarks.md). A set too small for IMAGE_MIN_STEPS optimizer steps
# in the default epochs trains for more epochs (the trainer settles it).
# Such a run raised to IMAGE_MIN_STEPS also stops once IMAGE_PATIENCE_STEPS steps bring no better
# validation loss: on 25 images (1 step an epoch) the best epoch was 120 of 5,000, and 97% of the
# 10.5 minutes went into overfitting; on 3,000 images (74 epochs of 68 steps) validation never went
# more than 5 epochs without a new best before its best (docs/benchmarks.md).
SMALL_GREY_PIXELS = 32 * 32
IMAGE_MIN_STEPS = 5_000
IMAGE_PATIENCE_STEPS = 1_000
IMAGE_DEFAULTS: dict[str, Any] = {
    "loss": "dlogistic",
    "arch": "conv",
    "hidden": 0,
    "batch_size": 32,
    "epochs": 10,
    "lr_warmup_epochs": 0,
    "kl_warmup_epochs": 1,
}


def with_image_defaults(settings: dict[str, Any], image_shape: tuple[int, ...]) -> dict[str, Any]:
    """`settings` with IMAGE_DEFAULTS filled in where it names no value, when the images of
    `image_shape` (C, H, W) are colour or grey of more than SMALL_GREY_PIXELS pixels, and not
    binarized; else `settings` as they are."""
    channels, height, width = image_shape
    small_grey = channels == 1 and height * width <= SMALL_GREY_PIXELS
    if small_grey or settings.get("binarize", TrainConfig.binarize) != "none":
        return dict(settings)
    return {**IMAGE_DEFAULTS, **settings}


def absolute_data_paths(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with a folder dataset (folder:PATH) and data_dir made absolute, so the config.json
    of a run names its images wherever the run is used from, not only from where it was trained."""
    resolved = dict(settings)
    dataset = resolved.get("dataset")
    if isinstance(dataset, str) and dataset.startswith("folder:"):
        resolved["dataset"] = "folder:" + os.path.abspath(os.path.expanduser(dataset.removeprefix("folder:")))
    if resolved.get("data_dir") is not None:
        resolved["data_dir"] = os.path.abspath(os.path.expanduser(resolved["data_dir"]))
    return resolved


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None, cli: bool = True) -> Any:
    """A dataclass field whose metadata carries its help text, allowed values, and whether it is a
    user setting (a CLI flag) or taken from the data."""
    metadata = {"help": help, "choices": choices, "cli": cli}
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network and its objective."""

    model: str = setting("vae", "ae = plain autoencoder, vae = variational autoencoder", MODELS)
    arch: str = setting(
        "resnet",
        "network: conv (strided convolutions), resnet (plus residual blocks) or mlp (784-400-latent)",
        ARCHS,
    )
    latent_dim: int = setting(32, "size of the latent vector (2 to plot it, 16-64 for quality)")
    loss: str = setting(
        "bernoulli",
        "pixel loss summed over pixels: bernoulli (cross-entropy), dlogistic (discretized logistic: the "
        "likelihood of 8-bit images, in bits per dimension), l2, l1",
        LOSSES,
    )
    beta: float = setting(1.0, "weight of the KL term of a VAE (1 = the plain VAE, >1 = beta-VAE)")
    objective: str = setting(
        "elbo", "elbo (the VAE bound, with beta) or iwae (K-sample importance-weighted bound)", OBJECTIVES
    )
    iw_samples: int = setting(5, "K, the samples per image of the iwae objective")
    free_bits: float | None = setting(
        None,
        "nats of KL per latent dimension that cost nothing, so units stay in use (0 = off; "
        f"default {PIXELCNN_FREE_BITS} with the pixelcnn decoder, which otherwise learns to ignore z, else 0)",
    )
    channels: int = setting(32, "conv/resnet: channels of the first stride-2 stage; each next stage doubles")
    norm: str = setting(
        "none", "conv/resnet: group normalization after each convolution (group), or none", NORMS
    )
    hidden: int = setting(512, "conv/resnet: units of a dense layer between the conv features and the latent")
    film: bool | None = setting(
        None,
        "conv/resnet decoder: scale and shift each channel of every hidden feature map by a linear "
        "function of z (FiLM), so colour times shape is one product away; default: on for colour "
        "images, off for grey ones",
    )
    mlp_hidden: int = setting(400, "mlp: units of its hidden layer (400 as in the PyTorch VAE example)")
    decoder: str = setting(
        "auto",
        "factorized (pixels independent given z), pixelcnn (each pixel also sees those above and to its "
        "left: far better likelihoods on 0/1 images, slower to draw) or auto (pixelcnn for a VAE on "
        "binarized images, else factorized)",
        DECODERS,
    )
    ar_channels: int = setting(16, "pixelcnn: channels of its masked convolutions")
    ar_layers: int = setting(2, "pixelcnn: masked 3x3 layers after its first 7x7 one")
    image_channels: int = setting(1, "channels of the images (from the data)", cli=False)
    image_height: int = setting(28, "height of the images in pixels (from the data)", cli=False)
    image_width: int = setting(28, "width of the images in pixels (from the data)", cli=False)

    def conv_channels(self) -> list[int]:
        """Channels per stride-2 stage of the conv/resnet nets: halve the image until its shorter side
        is at most MAX_FEATURE_SIZE, doubling from `channels` up to 8x (28x28 -> [32, 64],
        64x64 -> [32, 64, 128] with 32); [] for mlp."""
        if self.arch == "mlp":
            return []
        side, stages = min(self.image_height, self.image_width), 0
        while side > MAX_FEATURE_SIZE and stages < 5:
            side = math.ceil(side / 2)
            stages += 1
        return [min(self.channels * 2**i, 8 * self.channels) for i in range(max(stages, 1))]

    def resolved(self, binarized: bool = False) -> ModelConfig:
        """A copy with "auto" replaced: the decoder (pixelcnn for a VAE with the bernoulli loss on
        binarized images, where that likelihood is exact; else factorized), the free bits
        (PIXELCNN_FREE_BITS for an elbo-trained pixelcnn decoder, which would otherwise model the
        pixels alone and leave z unused, else 0) and film (on for colour conv/resnet decoders: set
        image_channels first)."""
        decoder = self.decoder
        if decoder == "auto":
            binary_vae = self.model == "vae" and self.loss == "bernoulli" and binarized
            decoder = "pixelcnn" if binary_vae else "factorized"
        free_bits = self.free_bits
        if free_bits is None:
            free_bits = PIXELCNN_FREE_BITS if decoder == "pixelcnn" and self.objective == "elbo" else 0.0
        film = self.film
        if film is None:
            film = self.image_channels > 1 and self.arch != "mlp"
        return dataclasses.replace(self, decoder=decoder, free_bits=free_bits, film=film)

    def validate(self) -> ModelConfig:
        """Raise VaelabError naming the first out-of-range setting; return self."""
        _check_choices(self)
        for name in ("latent_dim", "channels", "mlp_hidden", "ar_channels", "iw_samples", "image_channels",
                     "image_height", "image_width"):  # fmt: skip
            _at_least(name, getattr(self, name), 1)
        for name in ("hidden", "ar_layers", "beta"):
            _at_least(name, getattr(self, name), 0)
        if self.free_bits is not None:
            _at_least("free_bits", self.free_bits, 0)
        if self.objective == "iwae" and (self.model != "vae" or self.beta != 1 or self.free_bits):
            raise VaelabError("objective iwae needs model vae with beta 1 and no free_bits")
        if self.film and self.arch == "mlp":
            raise VaelabError(
                "film modulates the feature maps of a conv or resnet decoder; use arch conv or resnet"
            )
        if self.decoder == "pixelcnn" and (self.model != "vae" or self.loss != "bernoulli"):
            raise VaelabError(
                "decoder pixelcnn needs model vae and loss bernoulli (it models each pixel's probability); "
                "use decoder factorized"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        # a saved config is resolved: one without film was trained before it existed, without it
        return _from_dict(cls, {"film": False, **data}, "model setting")


@dataclass
class TrainConfig:
    """How a model is trained: the ModelConfig it builds, the data, and the optimization."""

    model_config: ModelConfig = field(default_factory=ModelConfig, metadata={"cli": False})
    dataset: str = setting(
        "mnist-mini",
        "mnist-mini (embedded digits), shapes (generated colour shapes, known factors), mnist, fashion-mnist, "
        "kmnist, or folder:PATH (your images). Colour images, and grey ones above 32 x 32 pixels, have "
        "defaults of their own for the settings not given: a conv VAE with --loss dlogistic, --hidden 0, "
        "--batch-size 32, --lr-warmup-epochs 0, --kl-warmup-epochs 1, and --epochs 10 or as many as 5,000 "
        "steps take on fewer images (26 dB on shapes in about 9 CPU minutes)",
    )
    data_dir: str | None = setting(None, "folder holding the IDX files of mnist/fashion-mnist/kmnist")
    image_size: int | None = setting(None, "resize every image to SIZE x SIZE (needed for mixed sizes)")
    max_memory: str | None = setting(
        None,
        "a folder whose decoded images take more than this (e.g. 8GB; 0 = always) is decoded once into a "
        "uint8 file in $VAELAB_CACHE/folders (default ~/.cache/vaelab) and streamed from it; default: "
        "$VAELAB_MAX_MEMORY if set, else half the available memory (under a container's or job's memory "
        "limit: of what is left under it)",
    )
    workers: int = setting(2, "processes that read a streamed folder's batches ahead of the training steps")
    binarize: str = setting(
        "none", "none, dynamic (fresh 0/1 draw each time an image is seen) or static (one draw)", BINARIZE
    )
    epochs: int = setting(45, "passes over the training images (colour and large images: see --dataset)")
    batch_size: int = setting(128, "images per optimizer step (colour and large images: 32)")
    lr: float | None = setting(
        None,
        f"Adam learning rate (default {DEFAULT_LR:g}; {PIXELCNN_LR:g} with the pixelcnn decoder; either "
        "halved for images above 64 x 64 pixels)",
    )
    val_fraction: float = setting(0.1, "share of the training split held out for validation")
    seed: int = setting(0, "seed of every random draw (weights, shuffling, sampling, binarization)")
    device: str = setting("auto", "auto picks CUDA, then Apple MPS, then CPU", DEVICES)
    amp: bool = setting(
        False, "bfloat16 mixed precision: the same as --precision bf16 (kept for older commands)"
    )
    precision: str = setting(
        "fp32",
        "arithmetic of the forward pass: fp32, or autocast to bf16 or fp16 (fp16 with a gradient scaler); "
        "weights and optimizer state stay fp32",
        PRECISIONS,
    )
    compile: bool = setting(
        False,
        "compile the encoder and decoder with torch.compile: faster steps after a one-off compilation "
        "(tens of seconds; needs a C compiler on a CPU)",
    )
    grad_clip: float = setting(
        0.0,
        "cut each step's gradient norm to at most this multiple of its running average (e.g. 4; 0 = off): "
        "one huge gradient, the start of a loss spike, then cannot stall Adam for thousands of steps",
    )
    kl_warmup_epochs: int = setting(
        10, "raise the KL weight linearly from 0 to beta over this many epochs (0 = off)"
    )
    mean_scale: float | None = setting(
        None,
        "dlogistic: the means learn as if every sub-pixel's scale were this (in [0, 1] pixel units; "
        "0 = off); the scales still learn, and the loss is the true -log p(x|z). Learned scales "
        "otherwise leave the pixels the model is unsure of, such as outlines, with weak gradients and "
        f"blurred means. Default: e^-3 = {DLOGISTIC_MEAN_SCALE:.4f} with --loss dlogistic, else 0",
    )
    lr_schedule: str = setting("cosine", "cosine decay to 0 over the epochs, or constant", SCHEDULES)
    lr_warmup_epochs: int = setting(
        2,
        "raise the learning rate linearly from near 0 to lr over this many epochs (0 = off): large "
        "first steps can leave a VAE's latent unused for good",
    )
    ema: float = setting(
        0.999, "keep an exponential moving average of the weights with this decay (e.g. 0.999; 0 = off)"
    )
    patience: int = setting(
        0, "stop when the validation loss has not improved for this many epochs (0 = never)"
    )
    classes: str | None = setting(
        None, "train only on these classes: numbers or names, comma-separated (e.g. 0,1,2 or cats,dogs)"
    )
    noise: str | None = setting(
        None,
        "train a denoiser: corrupt inputs with gaussian:SIGMA, salt-pepper:P or mask:FRACTION, score clean",
    )
    world_size: int = setting(1, "processes that trained the run together (torchrun)", cli=False)
    save_every: int = setting(
        0,
        "also save the training state every N optimizer steps within an epoch, so a killed run loses at "
        "most N steps (0 = none; the state is saved every 10 s anyway, within long epochs too)",
    )
    log: str = setting(
        "none",
        "also send each epoch's figures and a few sample grids to tensorboard (RUN/tensorboard) or mlflow "
        "(MLFLOW_TRACKING_URI, else MLflow's default)",
        LOGGERS,
    )

    @classmethod
    def from_settings(cls, **settings: Any) -> TrainConfig:
        """A TrainConfig from flat setting names (the CLI flags, e.g. latent_dim=2, epochs=20)."""
        model_names, train_names = setting_names(ModelConfig), setting_names(TrainConfig)
        unknown = sorted(set(settings) - model_names - train_names)
        if unknown:
            known = ", ".join(sorted(model_names | train_names))
            raise VaelabError(f"unknown setting {', '.join(unknown)} (known: {known})")
        model = ModelConfig(**{k: v for k, v in settings.items() if k in model_names})
        return cls(model_config=model, **{k: v for k, v in settings.items() if k in train_names})

    def settings(self) -> dict[str, Any]:
        """Every user setting by its flat name: the inverse of from_settings."""
        flat = {name: getattr(self.model_config, name) for name in setting_names(ModelConfig)}
        flat.update({name: getattr(self, name) for name in setting_names(TrainConfig)})
        return flat

    def validate(self) -> TrainConfig:
        """Raise VaelabError naming the first out-of-range setting; return self."""
        self.model_config.validate()
        _check_choices(self)
        for name in ("epochs", "batch_size"):
            _at_least(name, getattr(self, name), 1)
        if self.image_size is not None:
            _at_least("image_size", self.image_size, 1)
        if self.max_memory is not None:
            from vaelab.data.imageset import parse_bytes

            parse_bytes(self.max_memory)
        for name in ("kl_warmup_epochs", "lr_warmup_epochs", "patience", "save_every", "workers"):
            _at_least(name, getattr(self, name), 0)
        if self.mean_scale is not None:
            if not 0 <= self.mean_scale <= 1:
                raise VaelabError(f"mean_scale must be in [0, 1] (e.g. 0.05; 0 = off), got {self.mean_scale}")
            if self.mean_scale and self.model_config.loss != "dlogistic":
                raise VaelabError(
                    f"mean_scale applies to --loss dlogistic (whose scales are learned), not "
                    f"{self.model_config.loss}; drop it"
                )
        if self.lr is not None and not self.lr > 0:
            raise VaelabError(f"lr must be positive, got {self.lr}")
        if self.grad_clip != 0 and not self.grad_clip > 1:
            raise VaelabError(
                f"grad_clip must be 0 (off) or above 1 (a multiple of the average gradient norm, e.g. 4), "
                f"got {self.grad_clip}"
            )
        if not 0 <= self.ema < 1:
            raise VaelabError(f"ema must be in [0, 1) (e.g. 0.999; 0 = off), got {self.ema}")
        if not 0 < self.val_fraction < 1:
            raise VaelabError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.classes is not None and not any(part.strip() for part in self.classes.split(",")):
            raise VaelabError("classes names no class; give e.g. 0,1,2")
        if self.noise is not None:
            from vaelab.data.noise import parse_noise

            parse_noise(self.noise)
        return self

    def resolved(self) -> TrainConfig:
        """A copy with every "auto" replaced (decoder, free bits, learning rate, mean scale): what a run records,
        so a resumed run keeps it whatever later defaults say."""
        # film waits for the data's channel count: the trainer resolves it once it has the images
        model = dataclasses.replace(
            self.model_config.resolved(binarized=self.binarize != "none"), film=self.model_config.film
        )
        lr = self.lr if self.lr is not None else PIXELCNN_LR if model.decoder == "pixelcnn" else DEFAULT_LR
        precision = "bf16" if self.amp and self.precision == "fp32" else self.precision
        mean_scale = self.mean_scale
        if mean_scale is None:
            mean_scale = DLOGISTIC_MEAN_SCALE if model.loss == "dlogistic" else 0.0
        return dataclasses.replace(
            self, model_config=model, lr=lr, precision=precision, mean_scale=mean_scale
        )

    def class_list(self, names: Sequence[str] | None = None) -> list[int] | None:
        """The class numbers (labels) `classes` gives (None: every class): each part a name among
        the dataset's class `names` (a folder's sub-folders), else a number."""
        if self.classes is None:
            return None
        names = list(names or [])
        labels = set()
        for part in (part.strip() for part in self.classes.split(",") if part.strip()):
            if part in names:
                labels.add(names.index(part))
                continue
            try:
                labels.add(int(part))
            except ValueError:
                known = f"; its classes: {', '.join(names)}" if names else " (it has no class names)"
                raise VaelabError(
                    f"classes {self.classes!r}: {part!r} is neither a class number nor a class name "
                    f"of {self.dataset}{known}"
                ) from None
        if not labels:
            raise VaelabError("classes names no class; give e.g. 0,1,2")
        return sorted(labels)

    def to_dict(self) -> dict[str, Any]:
        """The training settings and what the run records of how it ran (world_size), without the
        model config (config.json keeps it beside them)."""
        return {name: getattr(self, name) for name in _recorded_names()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of to_dict (the model config left at its defaults)."""
        unknown = sorted(set(data) - _recorded_names())
        if unknown:
            known = ", ".join(sorted(_recorded_names()))
            raise VaelabError(f"unknown training setting: {', '.join(unknown)} (known: {known})")
        # a saved config is resolved: one without mean_scale was trained before it existed
        return cls(**{"mean_scale": 0.0, **data})


def _recorded_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig) if f.name != "model_config"}


def train_flags(settings: dict[str, Any]) -> list[str]:
    """The `vaelab train` flags that give these settings (flat names), the inverse of its parser:
    None and a switch at its default need no flag; off is `--no-NAME` where the default is not off
    (film: on, off, or decided by the data)."""
    defaults = {f.name: f.default for cls in (ModelConfig, TrainConfig) for f in setting_fields(cls)}
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value is None or (isinstance(value, bool) and value == defaults[name]):
            continue
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags.append(f"{flag}={value}")
    return flags


def setting_names(cls: type) -> set[str]:
    """Names of the user settings of a config dataclass (fields that are CLI flags)."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}


def setting_fields(cls: type) -> list[dataclasses.Field]:
    """The user-setting fields of a config dataclass, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _check_choices(config: Any) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise VaelabError(f"{f.name} {value!r} is not one of: {', '.join(choices)}")


def _at_least(name: str, value: float, low: float) -> None:
    if not value >= low:
        what = "at least 1" if low == 1 else "zero or more"
        raise VaelabError(f"{name} must be {what}, got {value}")


def _from_dict(cls: Any, data: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise VaelabError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return cls(**data)
