"""The one exception type that vaelab raises for problems a user can fix."""


class VaelabError(Exception):
    """A problem with the user's input or environment, explained in one line with its fix.

    The CLI prints the message (no traceback) and exits with status 2.
    """
