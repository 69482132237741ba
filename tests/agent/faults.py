"""Fault injection for the atomic-write tests: make the n-th file-system call fail."""

import os
from collections.abc import Callable
from typing import Any

import pytest


class Fault(Exception):
    """The injected failure."""


def fail_at(
    monkeypatch: pytest.MonkeyPatch,
    step: int,
    calls: tuple[str, ...] = ("open", "fsync", "rename", "replace"),
) -> list[str]:
    """Make the ``step``-th of the ``os`` ``calls`` raise Fault (-1: none); record them all."""
    seen: list[str] = []

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen.append(name)
            if len(seen) == step:
                raise Fault(f"injected at {name} #{step}")
            return real(*args, **kwargs)

        return call

    for name in calls:
        monkeypatch.setattr(os, name, wrap(name, getattr(os, name)))
    return seen
