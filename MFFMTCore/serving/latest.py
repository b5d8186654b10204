"""A bounded queue where the newest item wins: what a live stream needs between network and model.

When items come faster than they are taken, the oldest waiting ones are dropped (and counted)
instead of piling up: memory stays bounded and the consumer always works on a recent frame.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

Item = TypeVar("Item")


class LatestItems(Generic[Item]):
    """Thread-safe queue of at most ``capacity`` items; a put on a full queue drops the oldest.

    Args:
        capacity: items kept waiting (1: only the newest frame is ever processed).
    """

    def __init__(self, capacity: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._items: deque[Item] = deque()
        self._capacity = capacity
        self._ready = threading.Condition()
        self.received = 0  # items put
        self.dropped = 0  # items dropped unseen because newer ones came

    def put(self, item: Item) -> None:
        with self._ready:
            self.received += 1
            if len(self._items) == self._capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._ready.notify()

    def get(self, timeout: float | None = None) -> Item | None:
        """The oldest waiting item; None when none came within ``timeout`` seconds."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._items, timeout):
                return None
            return self._items.popleft()

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
