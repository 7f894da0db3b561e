"""The README is a newcomer's first page and docs/ the reference: both stay true and self-contained."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_reads_in_two_minutes():
    assert (REPO / "README.md").stat().st_size <= 6 * 1024


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_points_at_a_file_in_the_repository(page: Path):
    for target in LINK.findall(page.read_text()):
        assert "://" not in target and not target.startswith("mailto:"), f"{page.name} links outside: {target}"
        resolved = (page.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{page.name}: {target} leaves the repository"
        assert resolved.exists(), f"{page.name}: {target} does not exist"


def test_the_readme_links_every_reference_page():
    readme = (REPO / "README.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, page.name


def test_configuration_reference_matches_the_options():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_configuration_docs.py"), "--check"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_configuration_reference_names_every_option_of_the_help():
    from click.testing import CliRunner

    from kaito_runtime.cli import main

    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    reference = (REPO / "docs" / "configuration.md").read_text()
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", help_text)) - {"--help"}
    assert options, help_text
    missing = sorted(o for o in options if f"`{o}`" not in reference)
    assert not missing, missing
    for envvar in set(re.findall(r"env var: (KAITO_[A-Z_]+)", help_text)):
        assert f"`{envvar}`" in reference, envvar
