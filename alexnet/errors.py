"""Bad input and the words of messages: the one error type for bad input (the command line prints it as one
line and exits with status 2), and counted nouns for the lines people read."""


class InputError(ValueError):
    """Bad input from the user (a missing path, a corrupt file, an option out of range): not a bug."""


def count(n: int, noun: str) -> str:
    """'1 epoch', '3 epochs', '2 processes'."""
    return f"{n} {noun}{'' if n == 1 else 'es' if noun.endswith(('s', 'x', 'sh')) else 's'}"
