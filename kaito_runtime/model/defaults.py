"""What a model that is not a preset gets by default, the way a built-in preset would have it:
the tool-call and reasoning parsers, from ``presets/vllm/parsers.yaml`` (rules on the
architecture and the repo id, restating the built-in presets' own choices).
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import kaito_runtime.settings as data
from kaito_runtime.errors import CatalogError

_Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]*$")]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    architecture: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")] | None = None
    repo: Annotated[str, Field(min_length=3)] | None = None
    tool_call_parser: _Name | None = None
    reasoning_parser: _Name | None = None
    presets: list[str] = []
    source: str | None = None


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    rules: list[_Rule]


@dataclass(frozen=True)
class ParserChoice:
    """The parsers one rule gives, and which rule it was (for the dry run's "why")."""

    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    rule: str = "no rule matches"

    @property
    def vllm_args(self) -> tuple[str, ...]:
        args: list[str] = []
        if self.tool_call_parser:
            args += ["--tool-call-parser", self.tool_call_parser]
        if self.reasoning_parser:
            args += ["--reasoning-parser", self.reasoning_parser]
        if self.tool_call_parser:
            args.append("--enable-auto-tool-choice")
        return tuple(args)


def _describe(rule: _Rule) -> str:
    parts = [p for p in (rule.architecture, rule.repo and f"repo {rule.repo}") if p]
    ref = f"as preset {', '.join(rule.presets)}" if rule.presets else (rule.source or "")
    return f"{' + '.join(parts)} ({ref})" if ref else " + ".join(parts)


@functools.lru_cache(maxsize=4)
def _rules(path: Path) -> tuple[_Rule, ...]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        parsed = _RulesFile.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise CatalogError(f"Invalid parser rules file {path}", why=str(exc).splitlines()[0], fix=f"correct {path}") from None
    for i, rule in enumerate(parsed.rules, 1):
        if not (rule.architecture or rule.repo):
            raise CatalogError(f"Invalid parser rules file {path}", why=f"rule {i} matches nothing (no architecture, no repo)",
                               fix=f"give rule {i} an architecture or a repo glob")
        if not (rule.tool_call_parser or rule.reasoning_parser):
            raise CatalogError(f"Invalid parser rules file {path}", why=f"rule {i} chooses no parser", fix=f"drop rule {i}")
    return tuple(parsed.rules)


def parser_rules(path: Path | None = None) -> tuple[_Rule, ...]:
    return _rules(path or data.parser_rules_path())


def choose_parsers(architecture: str, repo_id: str | None, path: Path | None = None) -> ParserChoice:
    """The first rule matching the architecture and the repo id (case-insensitive glob)."""
    for rule in parser_rules(path):
        if rule.architecture is not None and rule.architecture != architecture:
            continue
        if rule.repo is not None and not (repo_id and fnmatch.fnmatch(repo_id.lower(), rule.repo.lower())):
            continue
        return ParserChoice(rule.tool_call_parser, rule.reasoning_parser, _describe(rule))
    return ParserChoice()
