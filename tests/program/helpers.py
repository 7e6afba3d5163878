"""Small helpers shared by the program's tests."""

from __future__ import annotations


def env_map(envs: list[str]) -> dict[str, str]:
    """A container's `envs` ("K=V" strings) as a dict."""
    return dict(e.split("=", 1) for e in envs)
