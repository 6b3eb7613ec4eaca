"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) as the paper specifies it."""

from .model import ARCHS, build_model

__all__ = ["ARCHS", "build_model"]
__version__ = "0.1.0"
