"""What people are told: the one error type for bad input (the command line prints it as one line and exits with
status 2), the one for a failing environment (one line, exit status 1), and the words of the lines they read
(counted nouns, the start of another library's error, a file name as a line can hold it)."""


class InputError(ValueError):
    """Bad input from the user (a missing path, a corrupt file, an option out of range): not a bug."""


def count(n: int, noun: str) -> str:
    """'1 epoch', '3 epochs', '2 processes'."""
    return f"{n} {noun}{'' if n == 1 else 'es' if noun.endswith(('s', 'x', 'sh')) else 's'}"


def first_words(err: Exception, most: int = 100) -> str:
    """The start of an exception's message: its first sentence, cut at a word within `most` characters."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
    return line if len(line) <= most else line[:most].rsplit(" ", 1)[0] + " ..."


def printable(name: object) -> str:
    """A file name as one line of text can hold it: as it is where every character prints, else Python's quoted
    form (a newline as \\n, a byte that is not UTF-8 as \\udce9), so that printing it neither fails nor breaks
    the line."""
    text = str(name)
    return text if text.isprintable() else repr(text)


class Failure(RuntimeError):  # noqa: N818 (the environment failed; "error" is the user's)
    """The environment failed (a full disk, a dead worker, a port taken): not the user's input, not a bug."""
