"""Imported by the fork server that starts reading workers in a process of several (see
`vaelab.data.stream.worker_start`): the server loads what the workers run (PyTorch, this package's
reader), so each worker forked from it starts at once, and blocks SIGTERM, so each worker starts
with it blocked, until its own handler is in place, as a worker forked from the trainer does."""

import signal

import vaelab.data.stream  # noqa: F401  (loaded once here, not in every worker)

if hasattr(signal, "pthread_sigmask"):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
