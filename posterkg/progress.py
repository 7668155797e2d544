"""Progress bars for long work (tqdm on stderr; silent when stderr is not a terminal)."""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
        unit: str = "it", disable: bool | None = None) -> tqdm:
    """A tqdm bar. ``POSTERKG_PROGRESS=1`` forces it on, ``=0`` off; default: on for a TTY."""
    env = os.environ.get("POSTERKG_PROGRESS")
    if disable is None and env is not None:
        disable = env == "0"
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable,
                dynamic_ncols=True, smoothing=0.1)
