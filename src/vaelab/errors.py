"""The exception vaelab raises for problems a user can fix, and the stop of a run on SIGTERM."""


class VaelabError(Exception):
    """A problem with the user's input or environment, explained in one line with its fix.

    The CLI prints the message (no traceback) and exits with status 2.
    """


class Terminated(KeyboardInterrupt):
    """Training stopped on SIGTERM (a scheduler's time limit or preemption, `kill`); the run folder
    holds what the message says and goes on with resume=True. The CLI exits with status 143."""

    def __init__(
        self, message: str = "stopped by SIGTERM; finished epochs are saved (continue with --resume)"
    ) -> None:
        super().__init__(message)
