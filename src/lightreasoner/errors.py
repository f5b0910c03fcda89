"""The one exception type the CLI turns into a clean message and a non-zero exit."""


class LightReasonerError(Exception):
    """A problem with the user's input (file, option, model); the message says which."""
