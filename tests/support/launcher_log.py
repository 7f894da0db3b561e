"""Reading a launcher's text log in the tests that run it as a process."""

from __future__ import annotations

# The launcher's own line once vLLM answers. Never look for the bare words "ready in": a
# launcher's warning "... Address already in use" holds them too.
READY_LINE = "kaito-run: ready in "


def times_ready(text: str) -> int:
    """How many times the launcher became ready (once per round of a group)."""
    return text.count(READY_LINE)
