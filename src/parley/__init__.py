"""Parley: a real-time voice AI agent server."""

__version__ = "0.1.0"
