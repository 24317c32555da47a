"""The FastAPI application: control plane, health, and the transports' endpoints."""

from parley.server.app import create_app

__all__ = ["create_app"]
