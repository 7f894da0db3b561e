"""Once per run: the request is settled once, the token resolved once, the user's vLLM arguments
tokenised once, the catalog read once and the vLLM command built once (filled in with the
weights' folder afterwards, not rebuilt). Counted with spies on the functions that do each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kaito_runtime import api, secrets, vllm_flags
from kaito_runtime.launch import vllm_command
from kaito_runtime.model import catalog
from tests.support.api_seam import Seam

TINY = Path(__file__).resolve().parent.parent / "models" / "tiny-llama"
MARK = "--max-num-seqs"  # a pass-through flag the spies look for


_COUNTS: dict[str, dict[str, int]] = {}


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    seen = {"settle": 0, "token": 0, "tokenise": 0, "catalog": 0, "build": 0}

    def spy(module, name, key, when=lambda *a, **k: True):
        real = getattr(module, name)

        def counted(*args, **kwargs):
            if when(*args, **kwargs):
                seen[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    spy(api, "settle_request", "settle")
    spy(secrets, "resolve_token", "token")
    user_tokens = lambda tokens, *a, **k: MARK in list(tokens)  # noqa: E731
    spy(vllm_flags, "group", "tokenise", user_tokens)
    spy(vllm_command, "group", "tokenise", user_tokens)
    spy(catalog, "load_catalog", "catalog")
    spy(vllm_command, "build_vllm_command", "build")
    _COUNTS["current"] = seen
    yield seen
    _COUNTS.pop("current", None)


def _request(tmp_path: Path, **changes) -> api.RuntimeRequest:
    config = tmp_path / "kaito.yaml"
    config.write_text("vllm:\n  enforce-eager: true\n")
    folder = tmp_path / "catalog"  # a team catalog with one preset of its own
    folder.mkdir(exist_ok=True)
    phi = catalog.load_catalog().get("phi-4-mini-instruct")
    text = catalog.export_yaml(phi, origin="test").replace("name: phi-4-mini-instruct", "name: team-phi")
    (folder / f"{phi.family}.yaml").write_text(text)
    counts = _COUNTS.get("current")
    if counts is not None:  # the set-up above read the catalog: only the run's own reads count
        counts.update(dict.fromkeys(counts, 0))
    fields = dict(model=str(TINY), assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w", config_file=config,
                  catalog_dir=tmp_path / "catalog", extra_vllm_args=(MARK, "7", "--trust-remote-code"))
    return api.RuntimeRequest(**{**fields, **changes})


def test_a_run_settles_resolves_tokenises_reads_and_builds_once(tmp_path, counts):
    seam = Seam()
    assert api.run(_request(tmp_path), {"HF_TOKEN": "hf_onceOnlyToken0123"}, effects=seam.effects) == 0
    assert counts == {"settle": 1, "token": 1, "tokenise": 1, "catalog": 1, "build": 1}
    argv = seam[0]["argv"]
    assert argv[argv.index(MARK) + 1] == "7" and "--enforce-eager" in argv and str(TINY) in argv


def test_a_plan_does_each_once_too(tmp_path, counts):
    api.dry_run(_request(tmp_path, dry_run=True), {}, effects=Seam().effects)
    assert counts == {"settle": 1, "token": 1, "tokenise": 1, "catalog": 1, "build": 1}


def test_the_command_is_filled_in_with_the_weights_folder_not_rebuilt(tmp_path, counts):
    from kaito_runtime import weights

    elsewhere = tmp_path / "resolved" / "folder"
    seam = Seam()
    seam.weights = lambda source, **kw: weights.WeightsResult(path=elsewhere, downloaded_bytes=0, reused=True,
                                                               seconds=0.0, files=1)
    request = _request(tmp_path, model=None, preset="phi-4-mini-instruct", extra_vllm_args=(MARK, "3"))
    assert api.run(request, {}, effects=seam.effects) == 0
    assert counts["build"] == 1
    argv = seam[0]["argv"]
    assert argv[2] == str(elsewhere) and argv.count(str(elsewhere)) == 1


def test_a_join_worker_settles_once_and_parses_its_leaders_args_once(tmp_path, counts):
    from kaito_runtime.launch.group import for_launch, load_group_secret, open_for_workers
    from kaito_runtime.request.settle import GroupRequest
    from kaito_runtime.types import Topology
    from tests.support.group_helpers import free_port_pair

    env = {"KAITO_GROUP_SECRET": "0123456789abcdef-the-group-secret"}
    port = free_port_pair()
    topo = Topology(nnodes=2, node_rank=0, leader_address="127.0.0.1", master_port=port)
    leader = for_launch(GroupRequest(nnodes=2, node_rank=0, master_port=port), topo, load_group_secret(None, env), env,
                        api.log)
    model = api.settle(_request(tmp_path, config_file=None)).model
    open_for_workers(leader, model, api.PlanOverrides(), (MARK, "7"))
    counts.update(dict.fromkeys(counts, 0))
    try:
        worker = api.RuntimeRequest(join=True, node_rank=1, leader_address="127.0.0.1", master_port=port,
                                    rendezvous_timeout=5, assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w")
        planned, built = api.dry_run(worker, env, effects=Seam().effects)
    finally:
        leader.store.close()
    assert counts == {"settle": 1, "token": 1, "tokenise": 1, "catalog": 1, "build": 1}
    assert planned.topology.nnodes == 2 and built.argv[built.argv.index(MARK) + 1] == "7"
