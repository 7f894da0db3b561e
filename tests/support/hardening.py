"""Helpers of the hardening tests: run `kaito-run` as a real process, and look for token fragments."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
FRAGMENT = 8  # the shortest piece of a token that must never show (the bar)


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def launcher_env(extra: Mapping[str, str] | None = None, *, home: Path) -> dict[str, str]:
    """The process environment with no ambient launcher or hub settings, and the code under test first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAITO_", "HF_", "HUGGING_FACE"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(home),
               HF_TOKEN_PATH=str(home / "no-stored-token"))
    env.update(extra or {})
    return env


def run_cli(args: Iterable[str], env: Mapping[str, str], timeout: float = 60) -> Ran:
    done = subprocess.run(
        [sys.executable, "-m", "kaito_runtime.cli", *args], env=dict(env), capture_output=True, timeout=timeout,
    )
    return Ran(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))


def fragments(secret: str, size: int = FRAGMENT) -> set[str]:
    """Every ``size``-character piece of ``secret`` that holds no control character (a piece with one
    would be shown escaped, and its escaped forms are checked separately), in raw form."""
    pieces = set()
    for start in range(len(secret) - size + 1):
        piece = secret[start : start + size]
        if all(ch.isprintable() and ch != " " for ch in piece):
            pieces.add(piece)
    return pieces


def leaked(secret: str, text: str) -> list[str]:
    """The fragments of ``secret`` (8+ printable characters) found in ``text``, empty when none."""
    return sorted(piece for piece in fragments(secret) if piece in text)
