"""Pure planning: what must be served where, and what differs from it."""
