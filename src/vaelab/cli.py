"""The `vaelab` command, built from the library's own signatures.

Each command is one library function (COMMANDS); its flags come from that function's parameters
(name, default, type, and the help text and choices in their `Annotated` metadata, see
vaelab.options), and `train`'s from the fields of ModelConfig and TrainConfig. So the command line
and the Python API cannot drift: a parameter added to a function is a flag. This module only
parses, calls, and prints.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vaelab.config import ModelConfig, TrainConfig, setting_fields
from vaelab.distributed import LAUNCHED, is_lead_process
from vaelab.errors import Terminated, VaelabError
from vaelab.options import Choices, Flag, Positional, Required
from vaelab.progress import bars_shown

EPILOG = """examples:
  vaelab demo --out demo                      # AE vs VAE on the embedded digits, with index.html
  vaelab train --model vae --latent-dim 2 --epochs 20 --out runs/vae2
  vaelab sample runs/vae2 -n 64 -o samples.png
  vaelab reconstruct runs/vae2 -n 16 -o recon.png
  vaelab interpolate runs/vae2 --from-class 1 --to-class 7 -o one_to_seven.png
  vaelab latent-plot runs/vae2 -o latent.png
  vaelab evaluate runs/vae2                   # NLL (K=1000), ELBO parts, active units -> eval.json
  vaelab train --dataset shapes --out runs/shapes   # colour, known factors (about 9 CPU minutes)
  vaelab traverse runs/shapes -o traversal.png
  vaelab attribute runs/shapes --factor size && vaelab edit runs/shapes --attribute size --amount 0.08
  vaelab report runs/vae2                     # runs/vae2/report.html, pictures embedded
  vaelab serve runs/vae2                      # explore it in the browser at http://127.0.0.1:8000/
Every command takes --json: its last stdout line is then one JSON object of paths and figures.
`vaelab COMMAND --help` lists every option; each is a parameter of the Python function
of the same name (vaelab.sample, vaelab.anomaly_fit, ...)."""


@dataclass(frozen=True)
class Command:
    """A CLI command: the library function it calls ("module:name", imported when the command
    runs, so that `vaelab sample` does not wait for scikit-learn), a one-line help, and optionally
    a function that renders its result as a table for the terminal."""

    target: str
    help: str
    table_target: str | None = None
    description: str | None = None  # --help's text; the function's docstring when None

    @property
    def function(self) -> Callable[..., dict[str, Any]]:
        return _resolve(self.target)

    @property
    def table(self) -> Callable[[dict[str, Any]], str] | None:
        return None if self.table_target is None else _resolve(self.table_target)


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def commands() -> dict[str, Command]:
    """Every command by its name; "anomaly fit" is the `fit` action of `anomaly`."""
    return {
        "train": Command(
            "vaelab.training:train",
            "train an AE or VAE into a run folder",
            description="Train a model. Losses are summed over pixels and averaged over images (nats per image "
            "for the bernoulli loss). After every epoch the run folder gets config.json, model.safetensors, "
            "training_state.safetensors and a line in metrics.jsonl.",
        ),
        "sample": Command(
            "vaelab.apps.visualize:sample",
            "decode random latents (z ~ N(0, I), or where the images sit) into a PNG grid",
        ),
        "reconstruct": Command(
            "vaelab.apps.visualize:reconstruct", "test images above their reconstructions, as a PNG"
        ),
        "interpolate": Command(
            "vaelab.apps.visualize:interpolate",
            "decode a path between two images or two classes, as a PNG strip",
        ),
        "latent-plot": Command(
            "vaelab.apps.visualize:latent_plot",
            "scatter of the test set's latents coloured by class (PCA if > 2-D)",
        ),
        "latent-grid": Command(
            "vaelab.apps.visualize:latent_grid",
            "decode an n x n grid over the latent plane (2 main directions if > 2-D)",
        ),
        "traverse": Command(
            "vaelab.apps.steer:traverse",
            "rows of images, each moving one latent coordinate from -3 to +3 (PNG)",
        ),
        "attribute": Command(
            "vaelab.apps.steer:attribute",
            "find and save the latent direction of a known factor or CSV attribute",
            "vaelab.apps.steer:format_summary",
        ),
        "edit": Command(
            "vaelab.apps.steer:edit", "move images along a saved attribute vector: a strip of amounts (PNG)"
        ),
        "evaluate": Command(
            "vaelab.apps.measure:evaluate",
            "NLL (importance sampled; bits/dim), ELBO parts, active units, PSNR, SSIM, MIG; writes RUN/eval.json",
            "vaelab.apps.measure:format_table",
        ),
        "denoise": Command(
            "vaelab.apps.denoise:denoise",
            "noisy / denoised / clean rows; PSNR and SSIM beside median and TV filters",
            "vaelab.apps.denoise:format_table",
        ),
        "compress": Command(
            "vaelab.apps.compress:compress",
            "store images as latent codes in one file; size, PSNR, JPEG comparison",
            "vaelab.apps.compress:format_table",
        ),
        "decompress": Command(
            "vaelab.apps.compress:decompress", "restore PNGs from a compressed file (same run only)"
        ),
        "anomaly fit": Command(
            "vaelab.apps.anomaly:anomaly_fit",
            "fit a detector on normal images (default: the run's training split)",
            "vaelab.apps.anomaly:format_summary",
        ),
        "anomaly score": Command(
            "vaelab.apps.anomaly:anomaly_score",
            "score images: CSV of name, score, flag, and a PNG of extremes",
            "vaelab.apps.anomaly:format_summary",
        ),
        "anomaly benchmark": Command(
            "vaelab.apps.anomaly_benchmark:anomaly_benchmark",
            "AUROC/AUPRC of AE, VAE, PCA, IsolationForest, one class at a time",
            "vaelab.apps.anomaly_benchmark:format_table",
        ),
        "embed": Command(
            "vaelab.apps.embed:embed",
            "write latent means of a dataset or of image files to .npy/.npz/.csv",
            "vaelab.apps.embed:format_summary",
        ),
        "cluster": Command(
            "vaelab.apps.cluster:cluster",
            "k-means on latents vs pixels vs PCA; NMI, ARI, accuracy; scatter PNG",
            "vaelab.apps.cluster:format_table",
        ),
        "cache list": Command(
            "vaelab.apps.caches:cache_list",
            "list the decoded images of large folders and inputs: source, size on disk, last used",
            "vaelab.apps.caches:format_list",
        ),
        "cache clear": Command(
            "vaelab.apps.caches:cache_clear",
            "delete decoded images (all, or those unused for --older-than days)",
            "vaelab.apps.caches:format_clear",
        ),
        "report": Command(
            "vaelab.apps.run_report:report",
            "one self-contained HTML page about a run: curves, evaluation, samples, latent space, results",
        ),
        "serve": Command(
            "vaelab.apps.serve:serve",
            "a local web app and JSON API to explore the latent space (FastAPI; vaelab[serve])",
        ),
        "demo": Command(
            "vaelab.apps.demo:demo",
            "AE vs VAE on the embedded digits: trains 3 small models, writes index.html",
        ),
    }


class _TqdmHandler(logging.Handler):
    """Log lines that do not break a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


GROUP_HELP = {  # what a command with actions is about, before the list of its actions
    "anomaly": "flag images the model reconstructs much worse than normal ones",
    "cache": "the decoded folders in $VAELAB_CACHE/folders",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation): every command's flags, or with
    `only` just that command's (the others are listed with their help line), so that running one
    command imports only its own module."""
    parser = argparse.ArgumentParser(
        prog="vaelab",
        description="Train autoencoders (AE) and variational autoencoders (VAE) on images, then generate, "
        "reconstruct, interpolate and explore their latent space.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    every = commands()
    for name, command in every.items():
        group, _, action = name.rpartition(" ")
        if group and group not in groups:
            holder = top.add_parser(group, help=f"{GROUP_HELP[group]}: " + ", ".join(
                n.split()[1] for n in every if n.startswith(group + " ")
            ))  # fmt: skip
            groups[group] = holder.add_subparsers(dest="action", required=True, metavar="ACTION")
        if only is not None and name != only:
            (groups[group] if group else top).add_parser(action, help=command.help)
            continue
        sub = (groups[group] if group else top).add_parser(
            action, help=command.help, description=_description(command)
        )
        if name == "train":
            _add_train_flags(sub)
        else:
            _add_parameters(sub, command.function)
        sub.add_argument(
            "--json", action="store_true", help="print one JSON object of paths and figures last"
        )
        sub.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
        sub.set_defaults(command_name=name)
    return parser


def _description(command: Command) -> str:
    doc = command.description or inspect.getdoc(command.function) or command.help
    return doc.split("\n\n")[0].replace("\n", " ")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of ModelConfig and TrainConfig; defaults shown, not set (so a resumed
    run can tell which settings were given)."""
    for cls in (ModelConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        for field in setting_fields(cls):
            help_text = field.metadata.get("help", "")
            if not (field.default is None and "default" in help_text):  # else the help says it
                help_text += f" (default: {field.default})"
            _add_flag(parser, field.name, hints[field.name], help_text, field.metadata.get("choices"), None)
    parser.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="RUN_DIR",
        help="run folder to create (or continue with --resume)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=_auto,
        metavar="auto",
        help="continue the run in --out up to --epochs; --resume auto: continue it if it holds one, else "
        "start it (one command for a job that a scheduler may requeue or torchrun may restart)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes through torchrun (one per GPU, or CPU processes); --batch-size is the "
        "global batch. Several machines: run `torchrun --nnodes ... -m vaelab train ...` yourself (default: 1)",
    )


def _add_parameters(parser: argparse.ArgumentParser, function: Callable[..., Any]) -> None:
    """One argument per parameter of `function` (but `progress`, which --quiet sets)."""
    hints = typing.get_type_hints(function, include_extras=True)
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "progress":
            continue
        kind, metadata = _unwrap(hints[name])
        help_text = next((m for m in reversed(metadata) if isinstance(m, str)), "")
        choices = next((m.values for m in metadata if isinstance(m, Choices)), None)
        positional = next((m for m in metadata if isinstance(m, Positional)), None)
        short = next((m.short for m in metadata if isinstance(m, Flag)), None)
        if parameter.default is inspect.Parameter.empty and any(isinstance(m, Required) for m in metadata):
            flag = "--" + name.replace("_", "-")
            parser.add_argument(
                flag, dest=name, required=True, type=kind if kind in (int, float) else str, help=help_text
            )
            continue
        if parameter.default is inspect.Parameter.empty:
            parser.add_argument(
                name, metavar=positional.metavar if positional else name.upper(), help=help_text
            )
            continue
        default = parameter.default
        if default is not None and not isinstance(default, bool):
            help_text += f" (default: {default})"
        _add_flag(parser, name, kind, help_text, choices, short, default)


def _auto(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"{text!r}: give --resume alone, or --resume auto")
    return text


def _add_flag(
    parser: argparse.ArgumentParser,
    name: str,
    kind: Any,
    help_text: str,
    choices: tuple[str, ...] | None,
    short: str | None,
    default: Any = argparse.SUPPRESS,
) -> None:
    flag = "--input" if name == "inputs" else "--" + name.replace("_", "-")
    names = [short] if short == flag[1:] else [short, flag] if short else [flag]  # -n, not -n/--n
    base, optional = _strip_none(kind)
    if base is bool:
        if optional:  # three states: on, off, or the function decides
            parser.add_argument(
                *names, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif default is True:
            parser.add_argument(
                f"--no-{flag[2:]}", dest=name, action="store_false", help=f"do not {help_text}"
            )
        else:
            parser.add_argument(*names, dest=name, action="store_true", default=default, help=help_text)
        return
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if item is int:  # e.g. classes: "0,1,2"
            parser.add_argument(
                *names, dest=name, type=_int_list, default=default, metavar="LIST", help=help_text
            )
        else:  # files and folders
            parser.add_argument(*names, dest=name, nargs="+", default=default, metavar="PATH", help=help_text)
        return
    # a path, or a name or number (the library reads the text)
    convert = (
        str
        if base in (Path, str | Path) or _is_path_union(base) or set(typing.get_args(base)) == {int, str}
        else base
    )
    parser.add_argument(
        *names, dest=name, type=convert, choices=choices, default=default,
        metavar=None if choices else name.upper(), help=help_text,
    )  # fmt: skip


def _unwrap(hint: Any) -> tuple[Any, list[Any]]:
    """The type inside (possibly nested) Annotated hints, and all their metadata in order."""
    metadata: list[Any] = []
    while typing.get_origin(hint) is typing.Annotated:
        hint, *extra = typing.get_args(hint)
        metadata += extra
    return hint, metadata


def _strip_none(kind: Any) -> tuple[Any, bool]:
    """(type without None, whether None was allowed) for `X | None`."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        optional = len(args) < len(typing.get_args(kind))
        base = args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
        return base, optional
    return kind, False


def _is_path_union(kind: Any) -> bool:
    return set(typing.get_args(kind)) <= {str, Path} and bool(typing.get_args(kind))


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaelab")
    except PackageNotFoundError:
        return "unknown"


def _call(command: Command, name: str, args: argparse.Namespace) -> dict[str, Any]:
    given = {
        k: v for k, v in vars(args).items() if k not in ("command", "action", "command_name", "json", "quiet")
    }
    if name == "train":
        out, resume, nproc = given.pop("out"), given.pop("resume"), given.pop("nproc")
        return command.function(out, resume=resume, nproc=nproc, progress=not args.quiet, **given)
    if "progress" in inspect.signature(command.function).parameters:
        given["progress"] = not args.quiet
    return command.function(**given)


def _print_human(name: str, command: Command, result: dict[str, Any]) -> None:
    if command.table is not None:
        print(command.table(result))
    elif name == "train":
        loss = f"  (val loss {result['val_loss']:.2f} per image)" if "val_loss" in result else ""
        best = result.get("best_epoch", result["epochs"])
        if best != result["epochs"]:  # model.safetensors holds an earlier epoch's weights
            loss = f"{loss[:-1]}; kept epoch {best}'s weights, val loss {result['best_val_loss']:.2f})"
        epochs = f"{result['epochs']} epoch{'s' if result['epochs'] != 1 else ''}"
        print(f"trained {epochs} into {result['out']}{loss}")
    elif name == "serve":
        print(f"stopped serving {result['url']}")
    elif name == "demo":
        print(f"demo written to {result['out']}; open {result['index']}")
    else:
        print(f"wrote {result['out']}")


def _named_command(argv: list[str]) -> str:
    """The command that `argv` names ("anomaly fit" for a group's action), or "" for none."""
    words = [word for word in argv if not word.startswith("-")][:2]
    every = commands()
    for name in (" ".join(words), *words[:1]):
        if name in every:
            return name
    return ""


def worker_killed(error: BaseException) -> str | None:
    """The signal (SIGTERM, SIGKILL, ...) that killed a DataLoader worker, when PyTorch's error
    says one did; else None. A scheduler that signals every process of a job twice, or the
    out-of-memory killer, ends a worker in the middle of a step."""
    found = re.search(r"DataLoader worker \(pid\(?s?\)? [^)]*\) is killed by signal: (\w+)", str(error))
    if found is None:
        return None
    names = {"Terminated": "SIGTERM", "Killed": "SIGKILL", "Interrupt": "SIGINT"}
    return names.get(found.group(1), found.group(1))


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` says that the host or the GPU ran out of memory."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vaelab` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=_named_command(argv)).parse_args(argv)
    name = args.command_name
    command = commands()[name]
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("vaelab")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        with bars_shown(not args.quiet):
            result = _call(command, name, args)
    except VaelabError as error:
        print(f"vaelab {name}: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except OSError as error:  # a file or folder that cannot be read or written
        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or str(error)
        print(
            f"vaelab {name}: error: {where}{reason}; check the path, its permissions and the free space",
            file=sys.stderr,
        )
        return 2
    except (MemoryError, RuntimeError) as error:
        killed = worker_killed(error)
        if killed is not None:  # a signal sent to every process of the job, or the system's OOM killer
            saved = (
                "finished epochs are saved (continue with --resume)" if name == "train" else "run it again"
            )
            print(
                f"vaelab {name}: error: a process reading images was killed by {killed}; {saved}",
                file=sys.stderr,
            )
            return 128 + signal.SIGTERM if killed == "SIGTERM" else 1
        if not out_of_memory(error):
            raise
        print(
            f"vaelab {name}: error: out of memory ({_first_line(error)}); "
            "use a smaller --batch-size or --image-size",
            file=sys.stderr,
        )
        return 2
    except Terminated as stop:  # SIGTERM: a scheduler's time limit or preemption, or kill
        if is_lead_process() and LAUNCHED not in os.environ:  # said once: by rank 0, or by --nproc's launcher
            print(f"vaelab {name}: {stop}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        saved = "; finished epochs are saved (continue with --resume)" if name == "train" else ""
        print(f"vaelab {name}: interrupted{saved}", file=sys.stderr)
        return 130
    finally:
        package_logger.removeHandler(handler)
    if not is_lead_process():  # a torchrun worker other than rank 0: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(result, sort_keys=True, default=str))
    else:
        _print_human(name, command, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
