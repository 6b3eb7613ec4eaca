"""Numbers in messages for people."""


def count(n: int, noun: str) -> str:
    """'1 epoch', '3 epochs', '2 processes'."""
    return f"{n} {noun}{'' if n == 1 else 'es' if noun.endswith(('s', 'x', 'sh')) else 's'}"
