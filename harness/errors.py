"""User-facing errors: the CLI prints them without a traceback and exits with status 2."""


class HarnessError(Exception):
    """A problem with the user's input (a suite, a checkpoint, an asset); the message names the file and field."""
