"""The version, in a leaf module: provenance records it without importing the package's __init__."""
__version__ = "0.1.0"
