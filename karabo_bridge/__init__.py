"""Karabo Bridge protocol (placeholder; filled by the bridge work)."""
__version__ = "0.0.0"
