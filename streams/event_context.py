"""Make a Faust event the current one, for code running outside Faust's own iteration.

Faust tables write to the partition of the *current* event (and windowed tables pick the
window from its timestamp). Inside an agent that is the event being processed; code that
handles records it read itself (streams/intake.py) or a batch of events at once
(streams/usage.py) names the event explicitly with this context manager.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event


@contextmanager
def current_event(event: Any) -> Iterator[None]:
    """Table reads and writes inside the block use ``event``'s partition and timestamp.
    The caller keeps ``event`` referenced (Faust holds it weakly)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
