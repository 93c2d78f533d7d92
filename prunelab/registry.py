"""One tiny registry type for every pluggable axis (criteria, objectives, searches, mechanisms, tasks).

    CRITERIA = Registry("width criterion")

    @CRITERIA.register("maw")
    def maw(...): ...

    CRITERIA.get("maw")      # unknown names raise PrunelabError listing the known ones
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prunelab.errors import PrunelabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object map with a clear error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name`` (usable as a decorator when ``obj`` is omitted)."""

        def add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise PrunelabError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def parse_list(self, text: str) -> list[str]:
        """Split ``"a,b"`` (or ``"all"``) into validated names."""
        if text.strip() == "all":
            return self.names()
        names = [t.strip() for t in text.split(",") if t.strip()]
        if not names:
            raise PrunelabError(f"no {self.kind} given; known: {', '.join(self.names())}")
        for n in names:
            self.get(n)
        return names

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
