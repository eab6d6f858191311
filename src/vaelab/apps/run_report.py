"""`vaelab report RUN`: one self-contained HTML page that shows what a run learned.

The page holds the run's settings, its loss per epoch in parts (reconstruction, KL), the
evaluation table when `vaelab evaluate` has written eval.json, samples, reconstructions, the
latent scatter coloured by class, the decoded latent plane, interpolations, a traversal, edits
along saved attribute vectors, and the figures of every denoise / cluster / anomaly result saved in
the run folder. Every picture is drawn by the command of the same name and embedded in the page,
so the file can be mailed or attached as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from tqdm.auto import tqdm

from vaelab import checkpoint, latent, plots
from vaelab.apps import steer, visualize
from vaelab.apps.measure import EVAL_FILE
from vaelab.errors import VaelabError
from vaelab.fileio import RESULT_COMMANDS
from vaelab.options import Device, Flag, Progress, Run, Seed
from vaelab.pages import Section, Table, write_report
from vaelab.runs import epoch_note, open_run, run_images, weights_changed

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
PAIRS = 3  # interpolation rows


def report(
    run: Run,
    out: Annotated[str | Path | None, Flag("-o"), "HTML file to write (default: RUN/report.html)"] = None,
    seed: Annotated[Seed, "seed of the samples and of the images shown"] = 0,
    draws: Annotated[
        int,
        "pixelcnn decoders only: images drawn per latent for each mean image shown (one pass per pixel each)",
    ] = 1,
    device: Device = "auto",
    progress: Progress = True,
) -> dict[str, Any]:
    """Write one self-contained HTML page about a run: settings, loss curves, evaluation, samples,
    reconstructions, latent scatter and plane, interpolations, traversal, attribute edits, and
    the denoise / cluster / anomaly results saved in the run folder."""
    run = Path(run)
    out = Path(out) if out is not None else run / REPORT_FILE
    if out.suffix.lower() not in (".html", ".htm"):
        raise VaelabError(f"out {out} should end in .html")
    started = time.perf_counter()
    model, config = open_run(run, device)
    metrics = checkpoint.read_metrics(run)
    test = run_images(model, config)
    mc = model.config
    drawn = not model.pixels.closed_form_mean
    sections: list[Section] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        steps = _figures(run, tmp, model, config, test, metrics, seed, draws, device)
        for title, make in tqdm(steps, desc="report", unit="figure", disable=not progress, leave=False):
            try:
                section = make()
            except VaelabError as error:  # a figure this run cannot have: say why, keep the rest
                section = Section(title, f"Not shown: {error}.")
            if section is not None:
                sections.append(section)
        sections += _saved_results(run, tmp)
        kind = "VAE" if mc.model == "vae" else "autoencoder"
        lead = (
            f"A {kind} ({mc.arch}, {mc.loss} loss{', ' + mc.decoder + ' decoder' if mc.decoder != 'factorized' else ''}, "
            f"{mc.latent_dim}-D latent) trained for {len(metrics)} epoch{'s' if len(metrics) != 1 else ''} on {config.dataset} "
            f"({mc.image_channels} x {mc.image_height} x {mc.image_width} images)."
            + (" Its decoder draws pixel by pixel: images are draws from p(x|z)." if drawn else "")
        )
        write_report(
            out,
            f"vaelab report: {run.resolve().name}",
            lead,
            sections,
            table=_settings_table(run),
            footer=f"Written by `vaelab report {run}` in {time.perf_counter() - started:.0f} s. "
            f"Explore the latent space interactively with `vaelab serve {run}`.",
            embed=True,
            image_dir=tmp,
        )
    return {
        "out": str(out),
        "output": str(out),
        "sections": [s.title for s in sections],
        "bytes": out.stat().st_size,
        "seconds": time.perf_counter() - started,
    }


@contextlib.contextmanager
def _warnings_left_to_the_page(source: logging.Logger) -> Iterator[None]:
    """Drop the warnings `source` logs meanwhile: the report's page says what they would."""
    level = source.level
    source.setLevel(logging.ERROR)
    try:
        yield
    finally:
        source.setLevel(level)


def _figures(run, tmp, model, config, test, metrics, seed, draws, device) -> list[tuple[str, Any]]:
    """(title, function making its Section) for each figure, in page order."""
    mc = model.config
    vae = mc.model == "vae"
    plane = "the latent plane" if mc.latent_dim == 2 else "the plane of the two main principal directions"

    def curves() -> Section | None:
        if not metrics:
            return None
        plots.save_loss_parts(metrics, tmp / "loss.png")
        unit = "nats per image" if mc.loss in ("bernoulli", "dlogistic") else f"{mc.loss} loss per image"
        last = metrics[-1]
        kl = f", KL {last['val_kl']:.2f}" if vae else ""
        return Section(
            "Training curves",
            f"Loss per epoch in {unit}: validation solid, training dashed. Last epoch: validation loss "
            f"{last['val_loss']:.2f} = reconstruction {last['val_recon']:.2f}{kl}.",
            "loss.png",
            table=_metrics_table(metrics),
        )

    def samples() -> Section:
        with _warnings_left_to_the_page(visualize.logger):  # sample's prior warning: said below
            prior = visualize.sample(run, n=64, out=tmp / "samples.png", seed=seed, device=device)
        visualize.sample(
            run, n=64, out=tmp / "samples_fitted.png", seed=seed, latents="fitted", device=device
        )
        if vae:
            text = "First, 64 latent vectors drawn from the prior N(0, I), decoded."
        else:
            text = ("First, 64 vectors drawn from N(0, I), decoded. An autoencoder has no prior: expect few of "
                    "them to look like the data.")  # fmt: skip
        gap = prior.get("prior_mismatch_nats")
        if gap is not None and gap > latent.PRIOR_MISMATCH_NATS:
            kind = "latents" if vae else "codes"
            text += (f" The test images' {kind} sit {gap:.1f} nats from N(0, I) (a Gaussian of their mean "
                     "and spread against the prior), so many of these draws land where no image was encoded.")  # fmt: skip
        text += (" Then 64 drawn from a mixture of Gaussians fitted to the latents of the training images "
                 "(`vaelab sample --latents fitted`): where the data sits, whatever the prior.")  # fmt: skip
        return Section("Samples", text, "samples.png", extra_images=["samples_fitted.png"])

    def reconstructions() -> Section:
        result = visualize.reconstruct(
            run, n=20, out=tmp / "reconstructions.png", seed=seed, draws=draws, device=device
        )
        return Section("Reconstructions", f"Test images (odd rows) above their reconstructions (even rows); "
                       f"mean squared error {result['mse_per_pixel']:.4f} per pixel.", "reconstructions.png")  # fmt: skip

    def scatter() -> Section:
        visualize.latent_plot(run, out=tmp / "latent.png", device=device)
        return Section("Latent space", f"Each test image encoded and drawn on {plane}"
                       + (", coloured by class." if test.labels is not None else "."), "latent.png")  # fmt: skip

    def grid() -> Section:
        n = 15 if model.pixels.closed_form_mean else 8  # a pixelcnn draws each one pixel by pixel
        visualize.latent_grid(run, out=tmp / "grid.png", n=n, draws=draws, device=device)
        return Section("Decoded latent plane", f"A {n} x {n} grid of points over {plane}, where 98% of the test "
                       "images lie, each decoded.", "grid.png")  # fmt: skip

    def interpolations() -> Section | None:
        if test.labels is None:
            return None
        classes = sorted(set(test.labels.tolist()))
        if len(classes) < 2:
            return None
        pairs = visualize.class_pairs(classes)
        names = test.class_names or [str(c) for c in range(max(classes) + 1)]
        images = []
        for i, (a, b) in enumerate(pairs[:PAIRS]):
            name = f"interpolation_{i}.png"
            visualize.interpolate(run, out=tmp / name, from_class=a, to_class=b, draws=draws, device=device)
            images.append(name)
        shown = ", ".join(f"{names[a]} to {names[b]}" for a, b in pairs[:PAIRS])
        return Section("Interpolations", f"Ten points on the straight line between the latent codes of a typical "
                       f"test image of one class and of another ({shown}), decoded.", images[0],
                       extra_images=images[1:])  # fmt: skip

    def traversal() -> Section:
        result = steer.traverse(run, out=tmp / "traversal.png", rows=8, device=device)
        rule = "the coordinates with the most KL, most first" if vae else "its first coordinates"
        return Section("Traversal", f"Each row moves one latent coordinate of test image 0 from -3 to +3 standard "
                       f"deviations, the others fixed ({rule}: {', '.join(f'z[{d}]' for d in result['dims'])}).",
                       "traversal.png")  # fmt: skip

    def attributes() -> Section | None:
        vectors, meta, stale = steer.current_attributes(run)
        left_out = (
            f" Left out, found for earlier weights: {', '.join(stale)} (run `vaelab attribute` again)."
            if stale else ""
        )  # fmt: skip
        if not vectors:
            return Section("Attribute vectors", left_out.strip()) if stale else None
        images = []
        for name in vectors:
            info = meta.get(name, {})
            amount = 2 * info["factor_std"] if info.get("kind") == "continuous" else 1.0
            file = f"attribute_{len(images)}.png"
            steer.edit(run, attribute=name, amount=amount, n_images=3, out=tmp / file, device=device)
            images.append(file)
        return Section("Attribute vectors", f"Test images moved along each saved attribute vector "
                       f"({', '.join(vectors)}); the input first, then amounts from minus to plus.{left_out}", images[0],
                       extra_images=images[1:])  # fmt: skip

    steps = [("Training curves", curves), ("Evaluation", lambda: evaluation_section(run)), ("Samples", samples),
             ("Reconstructions", reconstructions), ("Latent space", scatter)]  # fmt: skip
    if mc.latent_dim >= 2:
        steps.append(("Decoded latent plane", grid))
    steps.append(("Interpolations", interpolations))
    if model.pixels.closed_form_mean:  # traversals and edits show mean images
        steps += [("Traversal", traversal), ("Attribute vectors", attributes)]
    return steps


def evaluation_section(run: Path) -> Section:
    """The figures of RUN/eval.json as a table; a note where it is missing or unreadable."""
    path = run / EVAL_FILE
    if not path.exists():
        return Section(
            "Evaluation", f"Not yet measured: run `vaelab evaluate {run}` and write the report again."
        )
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError("not a table of figures")
    except (OSError, ValueError) as error:
        logger.warning("%s is unreadable (%s); the report leaves the evaluation out", path, error)
        return Section("Evaluation", f"{EVAL_FILE} is unreadable ({error}): run `vaelab evaluate {run}` "
                       "again and write the report again.")  # fmt: skip
    rows = [[key, _number(value)] for key, value in sorted(data.items())
            if _is_scalar(value) and key != "weights_sha256"]  # fmt: skip
    text = f"What `vaelab evaluate` measured on the test images ({EVAL_FILE})"
    return Section("Evaluation", text + _earlier_weights(run, data, f"vaelab evaluate {run}"),
                   table=Table(["figure", "value"], rows))  # fmt: skip


def _earlier_weights(run: Path, record: dict[str, Any], command: str) -> str:
    """The end of a section's sentence about a file a command wrote into the run: "." when its
    figures are of the weights the run holds (or it does not say which: earlier releases), else
    which weights they are of, and how to measure the newer ones."""
    if not weights_changed(run, record):
        return "."
    return (
        f", for earlier weights{epoch_note(record.get('weights_epoch'))}: the run has saved newer ones since"
        f"{epoch_note(checkpoint.weights_epoch(run))}. Run `{command}` again, then the report, for their figures."
    )


def _saved_results(run: Path, tmp: Path) -> list[Section]:
    """A section per denoise / cluster / anomaly result saved in the run folder (see
    fileio.write_result_record)."""
    sections = []
    for path in sorted(run.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("command") not in RESULT_COMMANDS:
            continue
        left_out = ("command", "out", "output", "record", "grid", "weights_sha256")
        figures = {k: v for k, v in record.items() if k not in left_out}
        rows = [[key, _number(value)] for key, value in _flatten(figures)]
        picture = path.with_suffix(".png")
        image = None
        if picture.exists():
            image = f"result_{len(sections)}.png"
            (tmp / image).write_bytes(picture.read_bytes())
        sections.append(Section(f"Saved result: vaelab {record['command']} ({path.name})",
                                f"Figures and picture that `vaelab {record['command']}` wrote into the run folder"
                                + _earlier_weights(run, record, f"vaelab {record['command']}"),
                                image, table=Table(["figure", "value"], rows)))  # fmt: skip
    return sections


def _settings_table(run: Path) -> Table:
    data = checkpoint.read_config(run)
    rows = [[f"model.{k}", str(v)] for k, v in sorted(data.get("model", {}).items())]
    rows += [[f"train.{k}", str(v)] for k, v in sorted(data.get("train", {}).items())]
    return Table(["setting", "value"], rows, collapsed=f"all {len(rows)} settings of the run (config.json)")


def _metrics_table(metrics: list[dict[str, Any]]) -> Table:
    keys = [k for k in ("val_loss", "val_recon", "val_kl", "train_loss", "epoch_seconds") if k in metrics[0]]
    return Table(["epoch", *keys], [[str(row["epoch"]), *(_number(row[k]) for k in keys)] for row in metrics],
                 collapsed="the figures of every epoch")  # fmt: skip


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in data.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        elif _is_scalar(value):
            items.append((prefix + key, value))
    return items


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)
