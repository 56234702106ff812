"""Lastmile control plane: registry, repository builder, Triton runtime, services, API, CLI."""

__version__ = "0.1.0"
