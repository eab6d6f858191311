"""The `vaelab` command: parse arguments, call one library function, print where outputs went."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from vaelab.config import ModelConfig, TrainConfig, setting_fields, setting_names
from vaelab.errors import VaelabError

EPILOG = """examples:
  vaelab demo --out demo                      # AE vs VAE on the embedded digits, with index.html
  vaelab train --model vae --latent-dim 2 --epochs 20 --out runs/vae2
  vaelab sample runs/vae2 -n 64 -o samples.png
  vaelab reconstruct runs/vae2 -n 16 -o recon.png
  vaelab interpolate runs/vae2 --from-class 1 --to-class 7 -o one_to_seven.png
  vaelab latent-plot runs/vae2 -o latent.png
  vaelab evaluate runs/vae2                   # NLL (K=1000), ELBO parts, active units -> eval.json
Every command takes --json: its last stdout line is then one JSON object of paths and figures."""


class _TqdmHandler(logging.Handler):
    """Log lines that do not break a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object of paths and figures last")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def _add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per dataclass field: type, choices and help from the field; default shown, not set."""
    hints = typing.get_type_hints(cls)
    for field in setting_fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        help_text = field.metadata.get("help", "")
        if not (field.default is None and "default" in help_text):  # else the help says it
            help_text += f" (default: {field.default})"
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
            continue
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        parser.add_argument(
            flag,
            type=kind,
            choices=field.metadata.get("choices"),
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=None if field.metadata.get("choices") else field.name.upper(),
        )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="vaelab",
        description="Train autoencoders (AE) and variational autoencoders (VAE) on images, then generate, "
        "reconstruct, interpolate and explore their latent space.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train an AE or VAE into a run folder", description=(
        "Train a model. Losses are summed over pixels and averaged over images (nats per image for the "
        "bernoulli loss). After every epoch the run folder gets config.json, model.safetensors, "
        "training_state.safetensors and a line in metrics.jsonl."
    ))  # fmt: skip
    _add_config_flags(p, ModelConfig)
    _add_config_flags(p, TrainConfig)
    p.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="run folder to create (or continue with --resume)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    _add_common(p)

    p = commands.add_parser("sample", help="decode random latents z ~ N(0, I) into a PNG grid")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("-n", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("-o", "--output", default="samples.png", help="PNG to write (default: samples.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random latents (default: 0)")
    _add_device(p)
    _add_common(p)

    p = commands.add_parser("reconstruct", help="test images above their reconstructions, as a PNG")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("-n", type=int, default=16, help="number of test images (default: 16)")
    p.add_argument("-o", "--output", default="reconstructions.png", help="PNG to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of images (default: 0)")
    _add_device(p)
    _add_common(p)

    p = commands.add_parser(
        "interpolate", help="decode a path between two images or two classes, as a PNG strip"
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--from-class", type=int, help="start at a typical test image of this class")
    p.add_argument("--to-class", type=int, help="end at a typical test image of this class")
    p.add_argument("--from-image", metavar="FILE", help="start at this image file")
    p.add_argument("--to-image", metavar="FILE", help="end at this image file")
    p.add_argument(
        "--steps", type=int, default=10, help="images in the strip, both ends included (default: 10)"
    )
    p.add_argument("--method", choices=("linear", "slerp"), default="linear",
                   help="straight line, or spherical (follows the prior's shell) (default: linear)")  # fmt: skip
    p.add_argument("-o", "--output", default="interpolation.png", help="PNG to write")
    _add_device(p)
    _add_common(p)

    p = commands.add_parser(
        "latent-plot", help="scatter of the test set's latents coloured by class (PCA if > 2-D)"
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("-o", "--output", default="latent.png", help="PNG to write")
    _add_device(p)
    _add_common(p)

    p = commands.add_parser("latent-grid", help="decode an n x n grid over a 2-D latent plane")
    p.add_argument("run", metavar="RUN", help="run folder of a model with --latent-dim 2")
    p.add_argument("-n", type=int, default=15, help="points per side (default: 15)")
    p.add_argument("-o", "--output", default="latent_grid.png", help="PNG to write")
    _add_device(p)
    _add_common(p)

    p = commands.add_parser(
        "evaluate", help="NLL (importance sampled), ELBO parts, active units, PSNR; writes RUN/eval.json"
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--k", type=int, help="importance samples per image for the NLL (default: 1000)")
    p.add_argument("--n-images", type=int, help="score only the first N test images (default: all)")
    p.add_argument("--dataset", help="score on another dataset's test split (default: the run's)")
    p.add_argument("--data-dir", help="folder with that dataset's files")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior samples (default: 0)")
    p.add_argument("--no-quality", action="store_true",
                   help="skip sample quality (Fréchet distance, classifier accuracy on reconstructions)")  # fmt: skip
    p.add_argument("--quality", action="store_true",
                   help="measure sample quality even for a pixelcnn decoder, which draws images pixel by pixel")  # fmt: skip
    _add_device(p)
    _add_common(p)

    p = commands.add_parser(
        "denoise", help="noisy / denoised / clean rows; PSNR and SSIM beside median and TV filters"
    )
    p.add_argument("run", metavar="RUN", help="run folder (ideally trained with --noise)")
    p.add_argument(
        "--noise", metavar="SPEC", help="gaussian:SIGMA, salt-pepper:P or mask:FRACTION (default: the run's)"
    )
    _add_image_source(p)
    p.add_argument("--n-images", type=int, help="score only the first N images (default: all)")
    p.add_argument("-o", "--output", default="denoised.png", help="PNG to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    _add_device(p)
    _add_common(p)

    p = commands.add_parser(
        "compress", help="store images as latent codes in one file; size, PSNR, JPEG comparison"
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="image files or folders (default: --dataset's split)"
    )
    p.add_argument("-o", "--output", required=True, help="compressed file to write")
    p.add_argument("--dtype", choices=("float16", "int8"), default="float16",
                   help="code precision: float16, or int8 with a per-dimension scale (default: float16)")  # fmt: skip
    p.add_argument("--dataset", help="compress a dataset split instead of files (default: the run's)")
    p.add_argument("--data-dir", help="folder with that dataset's files")
    p.add_argument("--split", choices=("train", "test"), default="test", help="(default: test)")
    p.add_argument("--no-report", action="store_true", help="skip PSNR, PNG and JPEG comparison")
    _add_device(p)
    _add_common(p)

    p = commands.add_parser("decompress", help="restore PNGs from a compressed file (same run only)")
    p.add_argument("run", metavar="RUN", help="run folder that compressed the file")
    p.add_argument("file", metavar="FILE", help="compressed file")
    p.add_argument(
        "-o", "--output", default="decompressed", help="folder for the PNGs (default: decompressed)"
    )
    _add_device(p)
    _add_common(p)

    p = commands.add_parser(
        "anomaly", help="anomaly detection: fit a threshold on normal images, score new ones"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("fit", help="fit a detector on normal images (default: the run's training split)")
    q.add_argument("run", metavar="RUN", help="run folder")
    q.add_argument("--score", choices=("recon", "elbo", "nll"), default="recon",
                   help="reconstruction loss, negative ELBO (VAE) or importance-sampled NLL (default: recon)")  # fmt: skip
    q.add_argument(
        "--contamination", type=float, default=0.05, help="expected share of anomalies (default: 0.05)"
    )
    _add_image_source(q, default_split="train")
    q.add_argument("-o", "--output", default="detector.json", help="detector file to write")
    _add_device(q)
    _add_common(q)
    q = actions.add_parser(
        "benchmark", help="AUROC/AUPRC of AE, VAE, PCA, IsolationForest, one class at a time"
    )
    q.add_argument("--dataset", default="mnist-mini", help="a labelled dataset (default: mnist-mini)")
    q.add_argument("--protocol", choices=("held-out", "one-class"), default="held-out",
                   help="held-out: train on all classes but one; one-class: train on one (default: held-out)")  # fmt: skip
    q.add_argument("--classes", help="comma-separated classes to run (default: all)")
    q.add_argument("--steps", type=int, default=1000, help="optimizer steps per model (default: 1000)")
    q.add_argument("--arch", choices=("conv", "resnet", "mlp"), default="conv", help="(default: conv)")
    q.add_argument(
        "--latent-dim", type=int, default=16, help="latent size; also PCA's components (default: 16)"
    )
    q.add_argument("--seed", type=int, default=0, help="(default: 0)")
    _add_device(q)
    _add_common(q)
    q = actions.add_parser("score", help="score images: CSV of name, score, flag, and a PNG of extremes")
    q.add_argument("detector", metavar="DETECTOR", help="file written by `vaelab anomaly fit`")
    _add_image_source(q)
    q.add_argument("-o", "--output", default="scores.csv", help="CSV to write; the PNG goes beside it")
    _add_device(q)
    _add_common(q)

    p = commands.add_parser(
        "embed", help="write latent means of a dataset or of image files to .npy/.npz/.csv"
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    _add_image_source(p)
    p.add_argument("-o", "--output", default="embeddings.npz", help="file to write: .npy, .npz or .csv")
    _add_device(p)
    _add_common(p)

    p = commands.add_parser(
        "cluster", help="k-means on latents vs pixels vs PCA; NMI, ARI, accuracy; scatter PNG"
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--k", type=int, default=10, help="number of clusters (default: 10)")
    _add_image_source(p)
    p.add_argument(
        "-o", "--output", default="clusters.png", help="scatter PNG; assignments go beside it as .csv"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and PCA (default: 0)")
    _add_device(p)
    _add_common(p)

    p = commands.add_parser(
        "demo", help="AE vs VAE on the embedded digits: trains 3 small models, writes index.html"
    )
    p.add_argument("--out", default="vaelab-demo", metavar="DIR", help="output folder (default: vaelab-demo)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per model (default: 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    _add_device(p)
    _add_common(p)
    return parser


def _add_image_source(parser: argparse.ArgumentParser, default_split: str = "test") -> None:
    parser.add_argument("--dataset", help="a dataset name (default: the run's own)")
    parser.add_argument("--data-dir", help="folder with that dataset's files")
    parser.add_argument(
        "--split", choices=("train", "test"), default=default_split, help=f"(default: {default_split})"
    )
    parser.add_argument(
        "--input", nargs="+", metavar="PATH", help="image files or folders instead of a dataset"
    )


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                        help="where to run the model (default: auto)")  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaelab")
    except PackageNotFoundError:
        return "unknown"


def _run_train(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.train import train

    names = setting_names(ModelConfig) | setting_names(TrainConfig)
    settings = {k: v for k, v in vars(args).items() if k in names}
    return train(args.out, resume=args.resume, progress=not args.quiet, **settings)


def _run_sample(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.visualize import sample

    return sample(args.run, n=args.n, out=args.output, seed=args.seed, device=args.device)


def _run_reconstruct(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.visualize import reconstruct

    return reconstruct(args.run, n=args.n, out=args.output, seed=args.seed, device=args.device)


def _run_interpolate(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.visualize import interpolate

    return interpolate(
        args.run, out=args.output, from_class=args.from_class, to_class=args.to_class,
        from_image=args.from_image, to_image=args.to_image, steps=args.steps, method=args.method,
        device=args.device,
    )  # fmt: skip


def _run_latent_plot(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.visualize import latent_plot

    return latent_plot(args.run, out=args.output, device=args.device)


def _run_latent_grid(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.visualize import latent_grid

    return latent_grid(args.run, out=args.output, n=args.n, device=args.device)


def _run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.measure import evaluate, format_table

    result = evaluate(
        args.run, k=args.k, n_images=args.n_images, dataset=args.dataset, data_dir=args.data_dir,
        seed=args.seed, device=args.device, progress=not args.quiet,
        quality=True if args.quality else (False if args.no_quality else None),
    )  # fmt: skip
    if not args.json:
        print(format_table(result))
    return result


def _run_denoise(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.denoise import denoise, format_table

    result = denoise(
        args.run, noise=args.noise, out=args.output, dataset=args.dataset, data_dir=args.data_dir,
        split=args.split, inputs=args.input, n_images=args.n_images, seed=args.seed, device=args.device,
    )  # fmt: skip
    if not args.json:
        print(format_table(result))
    return result


def _run_compress(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.compress import compress, format_table

    result = compress(
        args.run, inputs=args.inputs, out=args.output, dtype=args.dtype, dataset=args.dataset,
        data_dir=args.data_dir, split=args.split, report=not args.no_report, device=args.device,
    )  # fmt: skip
    if not args.json:
        print(format_table(result))
    return result


def _run_decompress(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.compress import decompress

    return decompress(args.run, args.file, out=args.output, device=args.device)


def _run_anomaly(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.anomaly import anomaly_fit, anomaly_score

    if args.action == "benchmark":
        from vaelab.apps.anomaly import benchmark, format_benchmark

        try:
            classes = [int(c) for c in args.classes.split(",")] if args.classes else None
        except ValueError:
            raise VaelabError(f"--classes {args.classes!r} must be comma-separated integers") from None
        result = benchmark(
            args.dataset, args.protocol, classes, steps=args.steps, arch=args.arch, latent_dim=args.latent_dim,
            seed=args.seed, device=args.device, progress=not args.quiet,
        )  # fmt: skip
        if not args.json:
            print(format_benchmark(result))
        return result
    source = {"dataset": args.dataset, "data_dir": args.data_dir, "split": args.split, "inputs": args.input}
    if args.action == "fit":
        return anomaly_fit(args.run, out=args.output, score=args.score, contamination=args.contamination,
                           device=args.device, **source)  # fmt: skip
    return anomaly_score(args.detector, out=args.output, device=args.device, **source)


def _run_embed(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.embed import embed

    return embed(
        args.run, out=args.output, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
        inputs=args.input, device=args.device,
    )  # fmt: skip


def _run_cluster(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.cluster import cluster, format_table

    result = cluster(
        args.run, k=args.k, out=args.output, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
        inputs=args.input, seed=args.seed, device=args.device,
    )  # fmt: skip
    if not args.json:
        print(format_table(result))
    return result


def _run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from vaelab.apps.demo import demo

    if args.epochs < 1:
        raise VaelabError(f"--epochs must be at least 1, got {args.epochs}")
    return demo(args.out, epochs=args.epochs, seed=args.seed, device=args.device, progress=not args.quiet)


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "train": _run_train,
    "sample": _run_sample,
    "reconstruct": _run_reconstruct,
    "interpolate": _run_interpolate,
    "latent-plot": _run_latent_plot,
    "latent-grid": _run_latent_grid,
    "evaluate": _run_evaluate,
    "denoise": _run_denoise,
    "compress": _run_compress,
    "decompress": _run_decompress,
    "anomaly": _run_anomaly,
    "embed": _run_embed,
    "cluster": _run_cluster,
    "demo": _run_demo,
}


def _print_human(command: str, result: dict[str, Any]) -> None:
    if command == "train":
        print(f"trained {result['epochs']} epochs into {result['run_dir']}", end="")
        if "val_loss" in result:
            print(f"  (val loss {result['val_loss']:.2f} per image)", end="")
        print()
    elif command == "anomaly" and "auroc" in result:
        pass  # the table was printed
    elif command == "demo":
        print(f"demo written to {result['out']}; open {result['index']}")
    else:
        print(f"wrote {result['output']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vaelab` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("vaelab")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        result = COMMANDS[args.command](args)
    except VaelabError as error:
        print(f"vaelab {args.command}: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except KeyboardInterrupt:
        saved = "; finished epochs are saved (continue with --resume)" if args.command == "train" else ""
        print(f"vaelab {args.command}: interrupted{saved}", file=sys.stderr)
        return 130
    finally:
        package_logger.removeHandler(handler)
    if args.json:
        print(json.dumps(result, sort_keys=True, default=str))
    else:
        _print_human(args.command, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
