"""DeepInterestGR: the library. Importing it needs no Ray cluster."""

__version__ = "0.1.0"
