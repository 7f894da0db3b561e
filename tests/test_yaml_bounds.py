"""A catalog or config file cannot cost minutes and gigabytes, and no error line is unbounded
(issue 18, item 10): YAML alias expansion and file size are bounded before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.hardening import launcher_env, run_cli

PLAN = ["--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "4xH100"]


def laughs(levels: int = 9, top: str = "presets") -> str:
    """Nested aliases: a few hundred bytes that expand to 9**levels strings."""
    text = 'base: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n"
    return text + f"{top}: *l{levels - 1}\n"


def _check_one_short_error(ran, path: Path) -> str:
    assert ran.code == 2, ran.stderr  # (run_cli's timeout catches a hang; no clock is asserted)
    lines = [line for line in ran.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, ran.stderr[:2000]
    assert len(ran.stderr) < 4000 and len(ran.stdout) < 4000
    assert str(path) in lines[0]
    return lines[0]


def test_a_catalog_file_of_nested_aliases_is_refused_at_once(tmp_path):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    family = catalog / "x.yaml"
    family.write_text("family: x\n" + laughs())
    assert family.stat().st_size < 1024
    ran = run_cli([*PLAN, "--catalog-dir", str(catalog)], launcher_env(home=tmp_path), timeout=60)
    line = _check_one_short_error(ran, family)
    assert "alias" in line


def test_a_config_file_of_nested_aliases_is_refused_at_once(tmp_path):
    config = tmp_path / "inference_config.yaml"
    config.write_text(laughs(top="vllm"))
    ran = run_cli([*PLAN, "--config", str(config)], launcher_env(home=tmp_path), timeout=60)
    line = _check_one_short_error(ran, config)
    assert "alias" in line


@pytest.mark.parametrize("kind", ["catalog", "config"])
def test_a_file_over_the_size_limit_is_refused_naming_the_limit(tmp_path, kind):
    from kaito_runtime.yaml_bounds import MAX_FILE_BYTES

    big = "# " + "x" * 200 + "\n"
    body = big * (MAX_FILE_BYTES // len(big) + 2)
    if kind == "catalog":
        (tmp_path / "c").mkdir()
        path = tmp_path / "c" / "x.yaml"
        path.write_text("family: x\n" + body)
        args = [*PLAN, "--catalog-dir", str(tmp_path / "c")]
    else:
        path = tmp_path / "inference_config.yaml"
        path.write_text("vllm: {}\n" + body)
        args = [*PLAN, "--config", str(path)]
    ran = run_cli(args, launcher_env(home=tmp_path), timeout=60)
    line = _check_one_short_error(ran, path)
    assert "bytes" in line


def test_a_deeply_nested_file_is_one_clear_refusal(tmp_path):
    config = tmp_path / "inference_config.yaml"
    config.write_text("vllm: " + "[" * 50_000 + "]" * 50_000 + "\n")
    ran = run_cli([*PLAN, "--config", str(config)], launcher_env(home=tmp_path), timeout=60)
    _check_one_short_error(ran, config)


def test_a_huge_value_in_an_error_is_shortened(tmp_path):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "x.yaml").write_text("family: x\npresets:\n  - name: " + "a" * 200_000 + "\n")
    ran = run_cli([*PLAN, "--catalog-dir", str(catalog)], launcher_env(home=tmp_path), timeout=60)
    assert ran.code == 2, ran.stderr[:2000]
    assert len(ran.stderr) < 4000, len(ran.stderr)


def test_the_final_error_line_is_bounded(capsys):
    from kaito_runtime.logs import MAX_LINE_CHARS, final_error

    final_error("x" * 1_000_000, 2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) <= MAX_LINE_CHARS + 100
    assert "more characters" in err


@pytest.mark.parametrize("args", [["--" + "x" * 100_000], ["y" * 100_000], ["--port", "9" * 100_000]])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_usage_error_quoting_a_huge_argument_is_bounded(tmp_path, args, fmt):
    ran = run_cli([*args, "--log-format", fmt], launcher_env(home=tmp_path), timeout=60)
    assert ran.code == 2, ran.stderr[:500]
    assert len(ran.stderr) < 4000, len(ran.stderr)
