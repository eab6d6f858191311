"""How many PyTorch operators one training step dispatches: vaelab's trainer beside the bare loop.

    python benchmarks/ops_per_step.py                          # MLP VAE, batch 512
    python benchmarks/ops_per_step.py --arch conv --batch-size 128

On a GPU a small network's step is bound by the host: each operator the step dispatches (forward,
backward, optimizer) costs the host a few microseconds to launch, whatever the batch. The count is
the same on every device, so it can be taken on the CPU: this trains the network of
train_throughput.py with its bare loop (one epoch of mnist-mini) and with `vaelab.train` (three, the
plain schedule), records every operator dispatched (a TorchDispatchMode, below autograd, so backward
and optimizer operators count too) and splits the record at the start of each training step. It
prints the median number per step of each, and the operators the trainer dispatches more often than
the bare loop. Then the trainer's work between its second and third epochs (the first end makes
the copies kept between epochs): the validation pass, and the rest (loss sums, metrics, copies of
the weights and training state), the last step's own operators counted out. Then, in runs of their
own, the Python functions and built-ins called per step (sys.setprofile), the Python around the
operators. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import train_throughput as throughput

import vaelab
from vaelab import training
from vaelab.operators import OperatorLog


class CallLog:
    """The Python functions and built-ins called while active (in this thread), as OperatorLog
    names operators: the other half of a step's host work, the Python around the operators."""

    MARK = OperatorLog.MARK
    parts = OperatorLog.parts
    mark = OperatorLog.mark

    def __init__(self) -> None:
        self.names: list[str] = []

    def _called(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            self.names.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}")
        elif event == "c_call":
            self.names.append(getattr(arg, "__qualname__", str(arg)))

    def __enter__(self) -> CallLog:
        sys.setprofile(self._called)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)


def bare_steps(case: dict, images: torch.Tensor, recorder: OperatorLog | CallLog) -> list[list[str]]:
    model = throughput.build(case)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    data = images.float() / 255
    batch = case["batch_size"]
    with recorder:
        order = torch.randperm(len(data))
        for start in range(0, len(data) - batch + 1, batch):
            recorder.mark()
            optimizer.zero_grad()
            model(data[order[start : start + batch]]).loss.backward()
            optimizer.step()
        recorder.mark()
    return recorder.parts()[1:]  # the first step makes Adam's moments


def trainer_steps(
    case: dict, recorder: OperatorLog | CallLog
) -> tuple[list[list[str]], list[str], list[str]]:
    """The trainer's steps of three epochs of one run, the validation after the second, and the rest
    of the work between the second and the third (the loss sums, metrics and the snapshots of weights and training state),
    but for the last step's own operators."""
    kinds: list[str] = []  # what starts at each mark
    schedule, validation = training.warmup_factor, training.mean_losses

    def marked(*args: Any) -> float:  # called once at the start of every training step
        recorder.mark()
        kinds.append("step")
        return schedule(*args)

    def validated(*args: Any, **kwargs: Any) -> dict[str, float]:
        recorder.mark()
        kinds.append("validation")
        try:
            return validation(*args, **kwargs)
        finally:
            recorder.mark()
            kinds.append("after validation")

    settings = {**throughput.PLAIN_TRAINING, "arch": case["arch"], "batch_size": case["batch_size"]}
    with tempfile.TemporaryDirectory() as tmp:
        training.warmup_factor, training.mean_losses = marked, validated
        try:
            with recorder:
                vaelab.train(Path(tmp) / "run", dataset="mnist-mini", model="vae", latent_dim=case["latent_dim"],
                             epochs=3, device="cpu", progress=False, **settings)  # fmt: skip
        finally:
            training.warmup_factor, training.mean_losses = schedule, validation
    parts = recorder.parts()  # what follows the last mark (the second epoch's end) is left out
    first = kinds.index("validation", kinds.index("validation") + 1)  # the second: copies made before
    # the first step makes Adam's moments; the last step of an epoch runs into the epoch's end
    steps = [part for kind, part, after in zip(kinds, parts, kinds[1:]) if kind == after == "step"][1:]
    # from the second epoch's last step to the third epoch's first: the step itself counted out below
    between = parts[first - 1] + parts[first + 1]
    return steps, parts[first], between


def per_step(steps: list[list[str]]) -> tuple[int, collections.Counter[str]]:
    counts = [len(step) for step in steps]
    typical = statistics.median_low(counts)
    return typical, collections.Counter(steps[counts.index(typical)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=("mlp", "conv"), default="mlp")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    case = {"arch": args.arch, "batch_size": args.batch_size, "latent_dim": 16}
    torch.set_num_threads(torch.get_num_threads())
    images = vaelab.load_images("mnist-mini", "train").images
    bare_n, bare_ops = per_step(bare_steps(case, images, OperatorLog()))
    steps, validation, between = trainer_steps(case, OperatorLog())
    trainer_n, trainer_ops = per_step(steps)
    # Python calls apart: a profile function slows the operators' Python, the recording of them too
    bare_calls, _ = per_step(bare_steps(case, images, CallLog()))
    trainer_calls, _ = per_step(trainer_steps(case, CallLog())[0])
    print(f"torch {torch.__version__}; {args.arch} VAE, batch {args.batch_size}: operators per training step")
    print(f"bare loop {bare_n}, trainer {trainer_n} ({trainer_n / bare_n:.2f}x)")
    extra = {name: trainer_ops[name] - bare_ops[name] for name in trainer_ops | bare_ops}
    extra = {name: n for name, n in sorted(extra.items(), key=lambda item: -abs(item[1])) if n}
    for name, n in extra.items():
        print(f"  {n:+4d}  {name}")
    # the work between epochs, but for the last step's own operators (a typical step's)
    rest = collections.Counter(between) - trainer_ops
    epoch_end = {name: n for name, n in rest.most_common()}
    print(f"between epochs: validation {len(validation)}, the rest {rest.total()} operators")
    for name, n in list(epoch_end.items())[:8]:
        print(f"  {n:4d}  {name}")
    print(f"Python calls per training step (functions and built-ins): bare loop {bare_calls}, "
          f"trainer {trainer_calls} ({trainer_calls / bare_calls:.2f}x)")  # fmt: skip
    print(json.dumps({"torch": torch.__version__, "case": case, "bare_ops_per_step": bare_n,
                      "trainer_ops_per_step": trainer_n, "trainer_minus_bare": extra,
                      "validation_ops": len(validation), "epoch_end_ops": rest.total(),
                      "epoch_end": epoch_end, "bare_calls_per_step": bare_calls,
                      "trainer_calls_per_step": trainer_calls}))  # fmt: skip


if __name__ == "__main__":
    main()
