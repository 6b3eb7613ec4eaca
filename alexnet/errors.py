"""The one error type for bad input: the command line prints it as one line and exits with status 2."""


class InputError(ValueError):
    """Bad input from the user (a missing path, a corrupt file, an option out of range): not a bug."""
