"""depthtune: distil what a language model does best into something cheaper."""

__version__ = "0.1.0"
