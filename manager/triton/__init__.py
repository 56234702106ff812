"""Triton runtime (embedded or external) and the one client wrapper that talks to it."""
