"""The training loop: plain, readable, resumable.

Data live on the training device as one uint8 tensor; each step slices a batch, converts it to
[0, 1] floats (and draws a fresh binarization when asked), and takes one Adam step. After every
epoch the validation loss is computed, a line is added to metrics.jsonl, and the weights and
optimizer state are saved atomically, so an interrupted or diverged run keeps its last good epoch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import hashlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NamedTuple

import torch
from tqdm.auto import tqdm

from vaelab import checkpoint, distributed, latent, tracking
from vaelab.config import (
    DEFAULT_LR,
    IMAGE_MIN_STEPS,
    IMAGE_PATIENCE_STEPS,
    LARGE_IMAGE_PIXELS,
    TrainConfig,
    absolute_data_paths,
    with_image_defaults,
)
from vaelab.data import load_images
from vaelab.data.imageset import memory_budget
from vaelab.data.noise import Noise, parse_noise
from vaelab.data.stream import DiskImages
from vaelab.data.transforms import binarize, binarize_uint8, to_unit
from vaelab.device import free_memory, model_device, resolve_device
from vaelab.errors import Terminated, VaelabError
from vaelab.models import AE, VAE, build_model
from vaelab.progress import bars_shown

logger = logging.getLogger(__name__)

RESUMABLE = (
    "epochs",
    "device",
    "amp",
    "precision",
    "compile",
    "max_memory",
    "workers",
    "patience",
    "log",
    "save_every",
)  # settings a resumed run may change
# settings whose value here means "vaelab chooses" (TrainConfig.resolved): the run recorded its
# choice, which a resumed run keeps when asked for the same "choose" again
CHOSEN = {"decoder": "auto", "free_bits": None, "film": None, "lr": None, "mean_scale": None}
CHECK_EVERY = 32  # steps between checks of the losses for NaN (each one waits for the device)
# Validation scores this many training batches at a time, so that it needs about the memory
# training does: for 64 px colour images at batch 32, 643 MB against 540 MB (anonymous memory of
# the process); at 512 images at a time 1,290 MB, and a job under a memory limit was killed
VALIDATION_BATCHES = 2
# The run folder (metrics, best weights, training state) is brought up to date at the end of an
# epoch at most once per SAVE_SECONDS, after the last epoch, and when training stops early, fails
# or is interrupted; an epoch that lasts longer saves its training state within itself, at the
# first step SAVE_SECONDS after the last save (with several processes: at the first loss check,
# every CHECK_EVERY steps). So a killed run loses about this much training (plus a step, or a
# check's steps), and epochs of milliseconds (small networks on a GPU) do not spend their host
# time writing files.
SAVE_SECONDS = 10.0
# One log line per epoch, at most once per LOG_SECONDS (and for the first, the last and the one that
# stops early): a 25-image folder trains 1,000 epochs of a tenth of a second, and a line each buried
# the run's story; metrics.jsonl keeps every epoch.
LOG_SECONDS = 10.0
COLLAPSED_KL = 1.0  # nats per image: a VAE whose validation KL is below this has stopped using z


class TrainingDivergedError(VaelabError):
    """The loss became NaN or infinite; the run folder keeps the last good epoch."""

    exit_code = 1


class SigtermStop:
    """What SIGTERM does while a run trains (`handle`, installed with distributed.on_sigterm).

    Once `defer` is set (one process, from the first write of the run on) the first SIGTERM only
    sets `requested`: the loop finishes its step, saves a checkpoint there and raises Terminated,
    so a preempted job loses no steps. Before that, with several processes (they cannot agree on
    a step) and on a second SIGTERM it raises Terminated at once, keeping the last finished epoch.
    """

    def __init__(self) -> None:
        self.defer = False
        self.requested = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.defer and not self.requested:
            self.requested = True
            return
        raise Terminated()  # at once


def derive_seed(seed: int, stream: str) -> int:
    """An independent, stable seed for one named random stream of a run."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def split_train_val(
    config: TrainConfig, device: torch.device
) -> tuple[torch.Tensor | DiskImages, torch.Tensor | DiskImages]:
    """The run's training and validation images (uint8 on `device`), binarized once if static.

    Validation images of a binarized run are binarized once with a fixed draw, so validation
    losses of different epochs compare. A folder over the memory budget (config.max_memory) is
    decoded into a file (vaelab.data.cache) and both parts are DiskImages, read batch by batch.
    """
    source = load_images(config.dataset, "train", config.data_dir, config.image_size, config.max_memory)
    rows, wanted = torch.arange(len(source)), config.class_list(source.class_names)
    if wanted is not None:
        if source.labels is None:
            raise VaelabError(f"classes needs labels, and {config.dataset} has none")
        rows = rows[torch.isin(source.labels, torch.tensor(wanted))]
        if len(rows) == 0:
            raise VaelabError(
                f"no training image of {config.dataset} has a label in classes {config.classes}"
            )
    n_val = max(1, round(len(rows) * config.val_fraction))
    if len(rows) - n_val < 1:
        raise VaelabError(
            f"{config.dataset} has {len(rows)} training image(s), too few to also hold out a validation image; "
            "add images"
        )
    order = torch.randperm(
        len(rows), generator=torch.Generator().manual_seed(derive_seed(config.seed, "split"))
    )
    if source.file is not None:  # streamed from its decoded file
        if config.binarize != "none":
            raise VaelabError(
                f"binarize {config.binarize} needs the images in memory, and {config.dataset} is over "
                f"max_memory; raise max_memory (--max-memory) or train without binarize"
            )
        rows = rows + source.file_start
        return (
            DiskImages(source.file, rows[order[n_val:]], config.workers),
            DiskImages(source.file, rows[order[:n_val]], config.workers),
        )
    images = source.images if wanted is None else source.images[rows]
    train_images, val_images = images[order[n_val:]], images[order[:n_val]]
    if config.binarize != "none":
        val_images = binarize_uint8(
            val_images, torch.Generator().manual_seed(derive_seed(config.seed, "val-bin"))
        )
    if config.binarize == "static":
        train_images = binarize_uint8(
            train_images, torch.Generator().manual_seed(derive_seed(config.seed, "bin"))
        )
    return train_images.to(device), val_images.to(device)


UNKNOWN_BUDGET = 2**62  # no memory figure to go by: any folder is read into memory


def agreed_budget(config: TrainConfig, context: distributed.Context, device: torch.device) -> TrainConfig:
    """`config` with the memory budget a folder is read into memory under: on a GPU, at most half
    of its free memory too (the images are copied onto it); with several processes, the smallest
    of theirs, each measured before any reads, so all read the folder into memory, or all stream
    it (measured after this machine's first process has read it, the others' would be smaller)."""
    if context.world == 1 and device.type != "cuda":
        return config
    budget = memory_budget(config.max_memory)
    if device.type == "cuda":
        on_device = free_memory(device) // 2
        budget = on_device if budget is None else min(budget, on_device)
    budget = distributed.smallest(UNKNOWN_BUDGET if budget is None else budget, context, device)
    return dataclasses.replace(config, max_memory=None if budget == UNKNOWN_BUDGET else str(budget))


@torch.no_grad()
def mean_losses(
    model: AE | VAE,
    images: torch.Tensor | DiskImages,
    batch_size: int,
    generator: torch.Generator,
    noise: Noise | None = None,
) -> dict[str, float]:
    """Loss, reconstruction and KL averaged over uint8 `images` (nats per image for bernoulli);
    with `noise`, the inputs are corrupted and scored against the clean images."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    if isinstance(images, DiskImages):
        chunks = images.batches(torch.arange(len(images)), batch_size, len(images), device)
    else:
        chunks = (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    with contextlib.closing(chunks):  # a streamed folder's reading workers end here, even on a stop
        for chunk in chunks:
            clean = to_unit(chunk)
            noisy = clean if noise is None else noise.apply(clean, generator)
            out = model(noisy, target=clean, generator=generator)
            totals += torch.stack([out.loss * len(out.recon), out.recon.sum(), out.kl.sum()]).double()
    model.train(was_training)
    loss, recon, kl = (totals / len(images)).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}


def new_run_config(requested: dict[str, Any], image_shape: tuple[int, ...], n_train: int) -> TrainConfig:
    """The settings a new run records for `n_train` training images of `image_shape` (C, H, W): what
    was `requested`, the defaults of colour and large images where it names no value
    (config.IMAGE_DEFAULTS; their epochs raised until training takes IMAGE_MIN_STEPS optimizer steps,
    such a run then stopping after IMAGE_PATIENCE_STEPS steps without a better validation loss unless
    a patience is given), every "auto" resolved, and the default learning rate halved for images
    over 64 x 64 pixels."""
    _, height, width = image_shape
    settings = with_image_defaults(requested, image_shape)
    config = TrainConfig.from_settings(**settings).validate()
    if "epochs" in settings and "epochs" not in requested:  # the default epochs of colour and large images
        steps_per_epoch = math.ceil(n_train / config.batch_size)
        floor = math.ceil(IMAGE_MIN_STEPS / steps_per_epoch)
        if floor > config.epochs:  # a small set: more epochs, and a stop once they only overfit
            config = dataclasses.replace(config, epochs=floor)
            if "patience" not in requested:
                patience = math.ceil(IMAGE_PATIENCE_STEPS / steps_per_epoch)
                config = dataclasses.replace(config, patience=patience)
    # Save what "auto" meant today, so a resumed run keeps it whatever later defaults say.
    config = config.resolved()
    if settings.get("lr") is None and height * width > LARGE_IMAGE_PIXELS:
        assert config.lr is not None
        config = dataclasses.replace(config, lr=config.lr / 2)
    return config


def train(
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool | Literal["auto"] = False,
    progress: bool = True,
    nproc: int = 1,
    **settings: Any,
) -> dict[str, Any]:
    """Train a model into the run folder `out` and return its paths and final figures.

    Settings come from `config` and/or keyword arguments named like the fields of TrainConfig and
    ModelConfig (the CLI flags, e.g. latent_dim=2). With resume=True the run's saved settings are
    used; only those in RESUMABLE (epochs, device, amp, precision, compile, patience, log, save_every)
    may change. resume="auto" continues the run if `out` holds one and starts it otherwise: one
    command for a job that may be run again (a requeued Slurm job, torchrun's --max-restarts).

    nproc > 1 runs the training in that many processes through torchrun (DistributedDataParallel;
    `batch_size` is then the global batch, shared among them); inside processes torchrun started,
    each rank trains its share and rank 0 writes the run folder.

    While a process trains, RUN/.train.lock keeps others out (checkpoint.RunLock). SIGTERM saves
    the training state at the end of the step under way and raises vaelab.errors.Terminated.
    """
    run_dir = Path(out)
    requested = absolute_data_paths({**(config.settings() if config else {}), **settings})
    if nproc < 1:
        raise VaelabError(f"nproc must be at least 1, got {nproc}")
    if resume == "auto":  # decided by every rank before any of them can write (they meet first)
        resume = checkpoint.can_resume(run_dir)
        logger.info(
            "resume auto: %s %s", "continuing the run in" if resume else "starting a new run in", run_dir
        )
    elif not isinstance(resume, bool):
        raise VaelabError(f"resume must be True, False or 'auto', got {resume!r}")
    if nproc > 1 and not distributed.in_torchrun():
        distributed.launch(run_dir, requested, nproc, resume, progress)
        return summarize(run_dir)
    # the lock is taken by the writing process before its first write
    sigterm = SigtermStop()
    with checkpoint.RunLock(run_dir) as lock, distributed.on_sigterm(sigterm.handle), bars_shown(progress):
        return _train(run_dir, requested, resume, progress, lock, sigterm)


def _train(
    run_dir: Path,
    requested: dict[str, Any],
    resume: bool,
    progress: bool,
    lock: checkpoint.RunLock,
    sigterm: SigtermStop,
) -> dict[str, Any]:
    if resume:
        config = _resume_config(run_dir, requested)
        saved = checkpoint.saved_progress(run_dir)
        if saved is not None and saved["epoch"] >= config.epochs:  # a part of a later epoch kept for later
            log = logger.info if distributed.is_lead_process() else logger.debug  # said once, by rank 0
            log(
                "%s has trained %d epochs, as many as asked (epochs %d): nothing to train; pass epochs N "
                "(--epochs) above %d to go on",
                run_dir, saved["epoch"], config.epochs, saved["epoch"],
            )  # fmt: skip
            return summarize(run_dir)
        if distributed.is_lead_process():
            lock.acquire()
    else:  # checked before any image is read; settled and resolved once the images are known
        config = TrainConfig.from_settings(**requested).validate()
        if distributed.is_lead_process():  # the other ranks write nothing
            _refuse_saved_run(run_dir)
            check_writable(run_dir)
            (run_dir / checkpoint.METRICS).unlink(missing_ok=True)  # left by a run that never saved an epoch

    context, device = distributed.setup(resolve_device(config.device))
    lead = context.lead
    progress = progress and lead
    if config.dataset.startswith("folder:"):  # a folder over max_memory is decoded once per machine
        agreed = agreed_budget(config, context, device)  # by all, before the machine's first reads
        with distributed.machine_lead_first(context):
            train_images, val_images = split_train_val(agreed, device)
    else:
        train_images, val_images = split_train_val(config, device)
    noise = parse_noise(config.noise) if config.noise else None
    image_shape = tuple(train_images.shape[1:])
    channels, height, width = image_shape
    if not resume:
        config = new_run_config(requested, image_shape, len(train_images))
    if config.batch_size < context.world:
        raise VaelabError(
            f"batch_size {config.batch_size} is smaller than the {context.world} processes sharing it"
        )
    model_config = dataclasses.replace(
        config.model_config, image_channels=channels, image_height=height, image_width=width
    ).resolved()  # what depends on the images (film) is settled now; the rest already is
    config = dataclasses.replace(config, model_config=model_config, world_size=context.world)

    with torch.random.fork_rng(devices=[]):  # weight init from the run's seed, global RNG untouched
        torch.manual_seed(derive_seed(config.seed, "init"))  # the same on every rank
        model = build_model(model_config).to(device)
    speed_up(model, channels_last=device.type == "cuda")
    ema = copy.deepcopy(model).requires_grad_(False) if config.ema else None  # validated and saved
    speed_up(model, compile_=config.compile)  # after the copy: the average stays eager
    net = model if context.world == 1 else torch.nn.parallel.DistributedDataParallel(model)
    assert config.lr is not None  # resolved above
    lr = config.lr
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))
    stream = "train" if lead else f"train-rank{context.rank}"  # rank 0's draws are a single process's
    generator = torch.Generator(device=device).manual_seed(derive_seed(config.seed, stream))
    metrics: list[dict[str, Any]] = []
    state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0}  # what --resume continues from
    partial: dict[str, Any] | None = None  # an epoch interrupted after a mid-epoch checkpoint
    if resume:
        state = checkpoint.load_training_state(run_dir, model, optimizer, generator, ema)
        metrics = [row for row in checkpoint.read_metrics(run_dir) if row["epoch"] <= state["epoch"]]
        partial = state.pop("partial", None)
        if not lead:  # the state holds rank 0's generator; the others draw afresh
            generator.manual_seed(derive_seed(config.seed, f"{stream}-resumed-{state['epoch']}"))
            if partial is not None:
                partial["totals"] = [0.0, 0.0, 0.0]  # rank 0 carries the sums of every rank
    start_epoch = state["epoch"] + 1
    warned_collapse = False
    if lead:
        check_writable(run_dir, create=True)
        lock.acquire()
        if not resume:  # again, locked: a run may have saved there while the images loaded
            _refuse_saved_run(run_dir)
        checkpoint.write_config(run_dir, model_config, config)
    sigterm.defer = context.world == 1  # from here on SIGTERM saves where the run is

    n_train, batch_size = len(train_images), config.batch_size
    # With several processes a last batch with fewer images than processes is left out (every
    # rank must have images); one process trains on every image.
    last = n_train % batch_size
    n_used = n_train - last if 0 < last < context.world else n_train
    steps_per_epoch = math.ceil(n_used / batch_size)
    total_steps = config.epochs * steps_per_epoch
    lr_warmup_steps = config.lr_warmup_epochs * steps_per_epoch
    if config.mean_scale:  # dlogistic: the means' gradient as with this scale (see DiscretizedLogistic.loss)
        model.pixels.mean_scale = config.mean_scale
    autocast, scaler = _mixed_precision(config.precision, device)
    clipper = None
    if config.grad_clip:
        clipper = GradientClipper(
            model.parameters(), config.grad_clip, device, state.get("grad_norm_average")
        )
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    logger.info(
        "training %s/%s (latent %d, %s loss) on %s: %d train / %d val images %s, %s",
        model_config.model, model_config.arch, model_config.latent_dim, model_config.loss, device, n_train, len(val_images),
        "x".join(map(str, image_shape)), _epochs(config.epochs),
    )  # fmt: skip
    kl_warmup_steps = config.kl_warmup_epochs * steps_per_epoch
    if model_config.model == "vae" and model_config.beta > 0 and config.kl_warmup_epochs >= config.epochs:
        shorter = config.epochs - 1
        logger.info(
            "the KL warm-up (%s) lasts the whole run, so the last epoch weighs the KL by %.2f on average, short "
            "of beta = %g, and its training loss counts less KL than the validation loss; --kl-warmup-epochs %s "
            "trains the last epoch with the whole objective",
            _epochs(config.kl_warmup_epochs),
            model_config.beta * mean_warmup_factor(config.epochs, steps_per_epoch, kl_warmup_steps),
            model_config.beta, f"{shorter} or fewer" if shorter else "0",
        )  # fmt: skip
    tracker = tracking.open_logger(config.log, run_dir, config.settings(), resume) if lead else None
    grid_latents = torch.randn(  # the same 64 latents decoded in every logged sample grid
        64, model_config.latent_dim, generator=torch.Generator().manual_seed(derive_seed(config.seed, "log"))
    )
    bar = tqdm(
        initial=partial["step"] if partial else 0,
        total=(config.epochs - start_epoch + 1) * steps_per_epoch,
        desc=f"train {model_config.model}-{model_config.latent_dim}d",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    writer = checkpoint.BackgroundWriter()
    # The latest unwritten write of each file, by name: (write, run_dir, tensors, ...) for "model"
    # and "state", whose tensors are copies kept on the device since their epoch's end.
    pending: dict[str, tuple[Any, ...]] = {}
    kept_best, kept_state = checkpoint.KeptCopies(), checkpoint.KeptCopies()
    last_saved = time.perf_counter()
    last_logged = -math.inf

    def save_pending() -> None:  # hand the pending writes to the writer, the training state last
        nonlocal last_saved
        for name in ("model", "metrics", "state"):
            if name in pending:
                write, folder, contents, *rest = pending.pop(name)
                if name != "metrics":  # to the host now: the next epoch's end refreshes the device copies
                    contents = checkpoint.to_host(contents)
                writer.submit(write, folder, contents, *rest)
        last_saved = time.perf_counter()

    # Every step sees the same image shape: let cuDNN time its convolution algorithms once per
    # shape and keep the fastest (restored when training ends).
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark or device.type == "cuda"
    reader: Iterator[torch.Tensor] | None = None  # a streamed folder's batches, read ahead by workers
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            # ---- one pass over the training images, in a fresh random order
            model.train()
            started = time.perf_counter()
            if partial is not None:  # go on after the last mid-epoch checkpoint (--save-every)
                order, saved_totals, skip = partial["order"].to(device), partial["totals"], partial["step"]
                started -= partial["seconds"]
                partial = None
            else:
                saved_totals = [0.0, 0.0, 0.0]
                order, skip = torch.randperm(n_train, generator=generator, device=device), 0
                distributed.broadcast(order, context)  # every rank follows rank 0's order
            # loss, recon, kl summed over images, on the device: the host waits only at checks
            totals = torch.tensor(saved_totals, dtype=torch.float64, device=device)
            unchecked: list[Unchecked] = []  # the steps whose losses the host has not looked at yet
            if isinstance(train_images, DiskImages):
                reader = train_images.batches(
                    order, batch_size, n_used, device, context.rank, context.world, skip
                )
            for step, start in enumerate(range(0, n_used, batch_size), 1):
                if step <= skip:
                    continue
                done = (epoch - 1) * steps_per_epoch + step - 1  # optimizer steps taken before this one
                kl_weight = model_config.beta * warmup_factor(done, kl_warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * lr_factor(config.lr_schedule, done, total_steps, lr_warmup_steps)
                if reader is None:
                    batch = order[start : min(start + batch_size, n_used)]
                    if context.world > 1:
                        batch = batch[context.rank :: context.world]  # this rank's share
                    x = to_unit(train_images[batch])
                else:
                    x = to_unit(next(reader))
                if config.binarize == "dynamic":
                    x = binarize(x, generator)
                x_in = x if noise is None else noise.apply(x, generator)  # denoising: corrupt, score clean
                with autocast:
                    out = net(x_in, target=x, generator=generator, kl_weight=kl_weight)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    out.loss.backward()
                    if clipper is not None:
                        clipper.clip()
                    optimizer.step()
                else:  # fp16: scale the loss so small gradients survive; skip steps whose gradients overflow
                    scaler.scale(out.loss).backward()
                    if clipper is not None:
                        scaler.unscale_(optimizer)
                        clipper.clip()
                    scaler.step(optimizer)
                    scaler.update()
                if ema is not None:
                    update_average(ema, model, ema_decay(done, config.ema))
                # kept as they are (views, no kernel); reduced at the next check, not at every step
                unchecked.append(
                    Unchecked(step, len(x), out.loss.detach(), out.recon.detach(), out.kl.detach())
                )
                bar.update()
                stopping_here = sigterm.requested and step < steps_per_epoch  # else at the epoch's end
                saving = config.save_every and (done + 1) % config.save_every == 0 and step < steps_per_epoch
                saving = saving or stopping_here
                # An epoch longer than SAVE_SECONDS is saved within itself on the same rhythm as short
                # epochs are at their ends. Rank 0's clock decides: one process checks and saves at
                # once, several at their next check, whose sum tells every rank.
                late = lead and step < steps_per_epoch and time.perf_counter() - last_saved >= SAVE_SECONDS
                checking = (
                    len(unchecked) >= CHECK_EVERY or step == steps_per_epoch or (late and context.world == 1)
                )
                if saving or checking:
                    loss, due = _check_losses(unchecked, totals, context, run_dir, config, epoch, late)
                    unchecked = []
                    bar.set_postfix(epoch=epoch, loss=f"{loss:.2f}", refresh=False)
                    saving = saving or due
                if saving:
                    summed = distributed.sum_(totals.clone(), context).tolist()
                    if scaler is not None:
                        state["scaler"] = scaler.state_dict()
                    if clipper is not None:
                        state["grad_norm_average"] = clipper.average.item()
                    if lead:
                        save_pending()  # the last epoch's files before this newer state
                        saved = {**state, "partial": {"step": step, "totals": summed,
                                                      "seconds": time.perf_counter() - started}}  # fmt: skip
                        tensors, metadata = checkpoint.training_state(
                            model, optimizer, generator, saved, ema, order
                        )
                        writer.submit(
                            checkpoint.write_training_state, run_dir, checkpoint.to_host(tensors), metadata
                        )
                if stopping_here:
                    raise Terminated(
                        f"stopped by SIGTERM at epoch {epoch}, step {step} of {steps_per_epoch}; saved there "
                        "(continue with --resume)"
                    )
            seconds = time.perf_counter() - started
            if reader is not None:  # its reading workers end before validation starts its own
                reader.close()
                reader = None
            totals = distributed.sum_(totals, context).tolist()
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            if clipper is not None:
                state["grad_norm_average"] = clipper.average.item()

            # ---- validation, metrics, checkpoint (every rank validates the same weights alike)
            val_generator = torch.Generator(device).manual_seed(derive_seed(config.seed, "val"))
            scored = model if ema is None else ema  # with --ema the average is what is kept and judged
            val = mean_losses(scored, val_images, VALIDATION_BATCHES * batch_size, val_generator, noise)
            row = {
                "epoch": epoch,
                "train_loss": totals[0] / n_used,
                "train_recon": totals[1] / n_used,
                "train_kl": totals[2] / n_used,
                "val_loss": val["loss"],
                "val_recon": val["recon"],
                "val_kl": val["kl"],
                "epoch_seconds": seconds,
                "images_per_second": n_used / seconds,
                "images_seen": epoch * n_used,  # all ranks together
                "optimizer_steps": epoch * steps_per_epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "kl_weight": kl_weight,
            }
            if clipper is not None:  # steps of this epoch whose gradient was cut
                row["clipped_steps"] = clipper.take_count()
            metrics.append(row)
            # The training state last: a run killed between these writes redoes this epoch, and
            # redoing it gives the same weights, metrics and best epoch again.
            if val["loss"] < state["best_val_loss"]:  # model.safetensors keeps the best weights
                state.update(best_val_loss=val["loss"], best_epoch=epoch)
                if lead:
                    weights = kept_best.take(checkpoint.live_state(scored))
                    pending["model"] = (checkpoint.write_model, run_dir, weights, model_config, config, epoch)
            state["epoch"] = epoch
            if lead:  # copies now, on the device; to the host and written in the background when due
                pending["metrics"] = (checkpoint.write_metrics, run_dir, list(metrics))
                tensors, metadata = checkpoint.training_state(model, optimizer, generator, state, ema)
                pending["state"] = (
                    checkpoint.write_training_state,
                    run_dir,
                    kept_state.take(tensors),
                    metadata,
                )
                if epoch == config.epochs or time.perf_counter() - last_saved >= SAVE_SECONDS:
                    save_pending()
            if tracker is not None:
                tracker.log_epoch(row, _log_grid(scored, grid_latents, epoch, config.epochs))
            bar.set_postfix(epoch=epoch, val=f"{val['loss']:.2f}", refresh=False)
            stopping = bool(config.patience) and epoch - state["best_epoch"] >= config.patience
            if (
                epoch in (start_epoch, config.epochs)
                or stopping
                or time.perf_counter() - last_logged >= LOG_SECONDS
            ):
                best = (
                    " (best)" if state["best_epoch"] == epoch
                    else f" (best {state['best_val_loss']:.2f}, epoch {state['best_epoch']})"
                )  # fmt: skip
                # the training loss weighs the KL less than beta: say how much, averaged over the epoch
                mean_weight = model_config.beta * mean_warmup_factor(epoch, steps_per_epoch, kl_warmup_steps)
                warming = (
                    f" weighted {mean_weight:.2f} on average in warm-up"
                    if model_config.model == "vae" and kl_weight < model_config.beta
                    else ""
                )
                logger.info(
                    "epoch %d/%d  train %.2f (recon %.2f, kl %.2f%s)  val %.2f%s  per image  %.0f img/s",
                    epoch, config.epochs, row["train_loss"], row["train_recon"], row["train_kl"], warming,
                    row["val_loss"], best, row["images_per_second"],
                )  # fmt: skip
                last_logged = time.perf_counter()
            collapsed = (
                model_config.model == "vae" and epoch > config.lr_warmup_epochs and val["kl"] < COLLAPSED_KL
            )
            if collapsed and not warned_collapse:  # once per run
                logger.warning(
                    "epoch %d: validation KL is %.2f nats per image, so the decoder is modelling the images "
                    "without z (posterior collapse); retrain with a longer --lr-warmup-epochs, a lower --lr "
                    "or more --free-bits",
                    epoch, val["kl"],
                )  # fmt: skip
                warned_collapse = True
            if stopping:
                logger.info(
                    "early stop: no better validation loss for %d epochs; model.safetensors holds the best, "
                    "epoch %d", config.patience, state["best_epoch"],
                )  # fmt: skip
                break
            if sigterm.requested and epoch < config.epochs:
                raise Terminated(f"stopped by SIGTERM after epoch {epoch}; saved (continue with --resume)")
    finally:
        bar.close()  # before an error is printed, not after it by the garbage collector
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if reader is not None:  # stopped within an epoch: end its reading workers now, not at exit
            reader.close()
        failing = sys.exc_info()[0] is not None
        try:
            if lead:
                save_pending()  # the last finished epoch, also when stopped early, failing or interrupted
            writer.close()  # every checkpoint on disk before the run returns or raises
        except Exception:
            if not failing:
                raise
            logger.exception("a checkpoint write failed while the run was stopping")
        if tracker is not None:
            tracker.close(finished=not failing)
    distributed.finish(context)  # every rank waits until rank 0 has written the last epoch
    return summarize(run_dir)


def _mixed_precision(
    precision: str, device: torch.device
) -> tuple[contextlib.AbstractContextManager[Any], torch.amp.GradScaler | None]:
    """The autocast context of the forward pass, and the gradient scaler fp16 needs."""
    if precision == "fp32":
        return contextlib.nullcontext(), None
    if device.type not in ("cuda", "cpu"):
        logger.warning("precision %s is not supported on %s; training in fp32", precision, device.type)
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return torch.autocast(device.type, dtype=dtype), scaler


class GradientClipper:
    """Cuts each step's global gradient norm to `factor` times the running average of the (cut)
    norms, with decay DECAY; the first step's norm starts the average. Everything stays on the
    device (no wait for the host), and a step whose norm is not finite leaves the average alone.
    The average is scale-free: the same factor suits 28 px digits and 128 px colour images."""

    DECAY = 0.99

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        factor: float,
        device: torch.device,
        average: float | None = None,
    ) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.factor = factor
        self.average = torch.tensor(math.nan if average is None else average, device=device)
        self._count = torch.zeros((), dtype=torch.int64, device=device)

    def clip(self) -> torch.Tensor:
        """Cut the gradients in place; return their norm before the cut."""
        grads = [p.grad for p in self.parameters if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        average = torch.where(torch.isnan(self.average), norm, self.average)
        limit = self.factor * average
        torch._foreach_mul_(grads, (limit / (norm + 1e-12)).clamp(max=1.0))
        updated = self.DECAY * average + (1 - self.DECAY) * torch.minimum(norm, limit)
        self.average = torch.where(torch.isfinite(norm), updated, self.average)
        self._count += norm > limit
        return norm

    def take_count(self) -> int:
        """Steps cut since the last call (waits for the device)."""
        count = int(self._count.item())
        self._count.zero_()
        return count


def speed_up(model: AE | VAE, compile_: bool = False, channels_last: bool = False) -> None:
    """Make `model` train faster in place, computing the same function: with `channels_last`, conv
    weights (and so the activations) in the NHWC layout that tensor-core kernels read fastest;
    with `compile_`, the encoder, the decoder and the pixel loss compiled by torch.compile (the
    loss's dozen elementwise steps over every sub-pixel fuse into a few kernels; the sampling and
    the KL weighting, which take random generators and changing numbers, stay eager). State-dict
    names are unchanged."""
    if channels_last and model.config.arch != "mlp":
        model.to(memory_format=torch.channels_last)
    if compile_:
        model.encoder.compile()
        model.decoder.compile()
        model.pixels.loss = torch.compile(model.pixels.loss)  # type: ignore[method-assign]


def _refuse_saved_run(run_dir: Path) -> None:
    if checkpoint.is_run(run_dir) or (run_dir / checkpoint.STATE).exists():
        raise VaelabError(
            f"{run_dir} already holds a run; pass resume=True (--resume) to continue it, or choose another out"
        )


def check_writable(run_dir: Path, create: bool = False) -> None:
    """Make sure files can be written in the run folder (creating it when `create`), before any
    training: a folder that cannot be written is one line, not a crash after the first epoch."""
    try:
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
        existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")
        if existing == run_dir:
            with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test."):
                pass
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"{existing} is not writable")
    except OSError as error:
        raise VaelabError(
            f"cannot write to {run_dir} ({error.strerror or error}); choose a folder you can write to"
        ) from None


def _log_grid(model: AE | VAE, latents: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor | None:
    """Images decoded from the fixed latents on a few epochs (tracking.sample_epochs), for the
    logger; None on the others, and for a decoder that draws pixel by pixel."""
    if epoch not in tracking.sample_epochs(epochs) or not model.pixels.closed_form_mean:
        return None
    model.eval()
    return latent.decode_latents(model, latents.to(model_device(model)))


def ema_decay(step: int, decay: float) -> float:
    """The averaging decay after `step` optimizer steps: (1 + step) / (10 + step) while that is
    below `decay`, so the early average forgets the random initial weights quickly."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_average(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, parameter by parameter."""
    torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), 1.0 - decay)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """KL weight multiplier: rises linearly from 0 at step 0 to 1 at `warmup_steps` (1 if no warm-up)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def mean_warmup_factor(epoch: int, steps_per_epoch: int, warmup_steps: int) -> float:
    """`warmup_factor` averaged over the steps of `epoch` (from 1): what its training loss weighs
    the KL by, relative to beta."""
    if warmup_steps <= 0:
        return 1.0
    first = (epoch - 1) * steps_per_epoch
    ramp = min(max(warmup_steps - first, 0), steps_per_epoch)  # steps still below the full weight
    ramp_sum = (ramp * first + ramp * (ramp - 1) / 2) / warmup_steps  # sum of d / warmup_steps over them
    return (ramp_sum + steps_per_epoch - ramp) / steps_per_epoch


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Learning-rate multiplier at `step` of `total_steps`: constant, or half a cosine from 1 to 0;
    times a linear ramp from 1/warmup_steps at step 0 to 1 at step warmup_steps - 1 (none if 0)."""
    ramp = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    if schedule == "cosine":
        return ramp * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return ramp


def summarize(run_dir: Path) -> dict[str, Any]:
    """Paths and last-epoch figures of a run folder (what `vaelab train --json` prints)."""
    metrics = checkpoint.read_metrics(run_dir)
    last = metrics[-1] if metrics else {}
    return {
        "out": str(run_dir),
        "run_dir": str(run_dir),  # the same path under its older name
        "model": str(run_dir / checkpoint.WEIGHTS),
        "config": str(run_dir / checkpoint.CONFIG),
        "metrics": str(run_dir / checkpoint.METRICS),
        "epochs": last.get("epoch", 0),
        **{
            k: last[k]
            for k in ("train_loss", "val_loss", "val_recon", "val_kl", "images_per_second")
            if k in last
        },
        **_best(metrics),
    }


def _best(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    if not metrics:
        return {}
    best = min(metrics, key=lambda row: row["val_loss"])
    return {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"]}


def _resume_config(run_dir: Path, requested: dict[str, Any]) -> TrainConfig:
    if not checkpoint.can_resume(run_dir):
        raise VaelabError(f"nothing to resume: {run_dir} holds no saved run; drop resume to start one")
    # older formats upgraded there; a relative data path (recorded before they were made absolute)
    # taken from here, as the trainer will read it
    merged = absolute_data_paths(checkpoint.read_train_config(run_dir).settings())
    for key, value in requested.items():
        if key not in merged:
            TrainConfig.from_settings(**{key: value})  # raises the unknown-setting error
        if key in RESUMABLE:
            merged[key] = value
        elif key in CHOSEN and value == CHOSEN[key]:
            continue  # the run's own choice stands
        elif merged[key] != value:
            raise VaelabError(
                f"{key} {value} differs from the resumed run's {merged[key]}; "
                f"a resumed run keeps its settings (only {', '.join(RESUMABLE)} may change)"
            )
    return TrainConfig.from_settings(**merged).validate().resolved()


class Unchecked(NamedTuple):
    """A training step's losses, on the device until the next check."""

    step: int
    images: int
    loss: torch.Tensor  # mean over the step's images
    recon: torch.Tensor  # per image
    kl: torch.Tensor  # per image


def _check_losses(
    unchecked: list[Unchecked],
    totals: torch.Tensor,
    context: distributed.Context,
    run_dir: Path,
    config: TrainConfig,
    epoch: int,
    save_due: bool = False,
) -> tuple[float, bool]:
    """Add the steps kept on the device since the last check to `totals` (loss, recon, kl summed
    over images), and bring their losses to the host in one transfer (their mean over ranks, so
    every rank stops at the same check); raise TrainingDivergedError naming the first step whose
    loss was NaN or infinite. Return the last step's loss, and whether any rank said `save_due`
    (rank 0 does, by its clock: every rank then saves at this step)."""
    losses = torch.stack([u.loss for u in unchecked]).double()  # [steps]
    sizes = torch.tensor([u.images for u in unchecked], dtype=torch.float64, device=losses.device)
    per_image = torch.stack([torch.cat([u.recon for u in unchecked]), torch.cat([u.kl for u in unchecked])])
    totals += torch.cat([(losses * sizes).sum(0, keepdim=True), per_image.double().sum(1)])
    flag = losses.new_full((1,), float(save_due))  # filled on the device: no copy from the host
    *values, due = (distributed.sum_(torch.cat([losses, flag]), context) / context.world).cpu().tolist()
    for u, value in zip(unchecked, values):
        if not math.isfinite(value):
            raise _diverged(run_dir, config, epoch, u.step, value)
    return values[-1], due > 0


def _diverged(
    run_dir: Path, config: TrainConfig, epoch: int, step: int, loss: float
) -> TrainingDivergedError:
    kept = (
        f"{run_dir} keeps epoch {epoch - 1} (continue with --resume) and its best weights"
        if epoch > 1
        else "nothing was saved"
    )
    return TrainingDivergedError(
        f"loss became {loss} at epoch {epoch}, step {step}; {kept}. Usual causes: a learning rate too high "
        f"(try lr {(config.lr or DEFAULT_LR) / 10:g}) or inputs outside [0, 1]"
    )
