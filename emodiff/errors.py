"""User-facing errors: one clear sentence, shown by the CLI without a traceback."""


class EmodiffError(Exception):
    """A problem with the user's input, files or environment, explained in one sentence.

    The CLI prints the message and exits with status 1; library callers can catch it.
    """
