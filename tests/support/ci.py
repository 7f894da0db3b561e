"""The one answer to "are we in CI?" and the one way a test says a tool is missing.

Under CI (``CI`` set to true/1/yes, as CI services do) every tool the suite needs is installed
(scripts/test-deps.sh, the test extra), so a missing one FAILS the test; elsewhere it skips with
the one-line reason.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str, *, module_level: bool = False) -> NoReturn:
    """Skip with ``reason``, or fail under CI (a tool CI must have is missing)."""
    if in_ci():
        pytest.fail(f"{reason} (CI must have it: scripts/test-deps.sh and the test extra install the tools)",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def need_module(name: str, reason: str) -> ModuleType:
    """``import name``, or ``missing(reason)``."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(reason)


def need_vllm(available: bool) -> None:
    """The real-vLLM modules' preamble: without vLLM (or the kaito-run script) skip the module,
    except under CI or with KAITO_REQUIRE_VLLM=1, where that is an error."""
    if available:
        return
    if in_ci() or os.environ.get("KAITO_REQUIRE_VLLM") == "1":
        raise RuntimeError("vLLM or kaito-run is missing (CI / KAITO_REQUIRE_VLLM=1): run scripts/setup.sh")
    pytest.skip("vLLM is not installed in this environment (scripts/setup.sh installs it)", allow_module_level=True)
