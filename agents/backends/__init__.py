"""Model backends behind one async interface (see ``base.Generator``)."""
from agents.backends.base import BackendError, GenRequest, Generation, Generator
from agents.backends.registry import Backends

__all__ = ["Backends", "BackendError", "GenRequest", "Generation", "Generator"]
