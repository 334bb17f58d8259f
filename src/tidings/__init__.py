"""Tidings: a self-hostable asynchronous mail server."""

__version__ = "0.1.0"
