"""The one exception a user sees: the CLI prints its message as one line and exits 2."""


class DepthtuneError(Exception):
    """A problem with the user's input or environment, worded as 'what is wrong; what to do'."""
