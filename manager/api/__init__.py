"""The management API: ``create_app(settings)`` in ``app``, one module per resource in
``routes``, dependencies (session, principal, workspace scope) in ``deps``, every error handler
in ``problems``."""

from manager.api.app import create_app

__all__ = ["create_app"]
