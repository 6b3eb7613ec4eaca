"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) as the paper specifies it."""

from .model import ARCHS
from .record import NetworkRecord, build_model

__all__ = ["ARCHS", "NetworkRecord", "build_model"]
__version__ = "0.1.0"
