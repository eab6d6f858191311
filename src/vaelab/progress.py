"""Whether progress bars show where no `progress` argument reaches them (reading and decoding an
image folder, deep in the data layer): on, but off under `vaelab COMMAND --quiet` and inside
`vaelab.train(..., progress=False)`."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_shown: contextvars.ContextVar[bool] = contextvars.ContextVar("vaelab_progress_shown", default=True)


@contextlib.contextmanager
def bars_shown(on: bool) -> Iterator[None]:
    """Show (or hide) such bars inside the block."""
    token = _shown.set(on)
    try:
        yield
    finally:
        _shown.reset(token)


def bar_hidden(count: int = 0, least: int = 0) -> bool:
    """True when a bar over `count` items should not show: bars are off, or there are fewer than
    `least` items (too quick to be worth one)."""
    return not _shown.get() or count < least
