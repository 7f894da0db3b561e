"""The group's store (launch/group/store.py) through a real torch.distributed TCPStore on
loopback: the leader's judgement, signed round-scoped messages, the listening address, the port
errors and the deadline on every call."""

import logging
import socket
import subprocess

import pytest

from kaito_runtime.errors import StorePortTakenError
from kaito_runtime.launch.group.secret import GroupSecret, api_key_digest
from tests.support.ports import free_port
from kaito_runtime.launch.group.store import (
    CheckIn, GroupStore, StopKind, StopNotice, fingerprint, judge, plan_fields,
)

LOG = logging.getLogger("test-group-store")
ARGV = ["vllm", "serve", "/m", "--tensor-parallel-size", "2", "--max-model-len", "256", "--enforce-eager",
        "--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1", "--port", "5000"]
SECRET = GroupSecret(b"0123456789abcdef-the-group-secret", "test")


def node(rank, argv=ARGV, api_key_digest=None, **kw):
    fields = plan_fields("tiny", "abc", [t if t != "0" or i == 0 else str(rank) for i, t in enumerate(argv)],
                         api_key_digest=api_key_digest)
    base = dict(rank=rank, host_ip="127.0.0.1", hostname=f"n{rank}", resources={"cpu_cores": 1, "ram_bytes": 1},
                kaito_runtime_version="0.1", vllm_version="0.32.0", plan_fields=fields, weights_complete=True)
    base.update(kw)
    return CheckIn(**base)


def test_plan_fields_leave_out_the_per_node_flags_and_keep_the_rest():
    fields = plan_fields("tiny", None, ARGV + ["--headless"])
    assert fields["--max-model-len"] == "256" and fields["--enforce-eager"] == "" and fields["revision"] == "-"
    assert not {"--node-rank", "--headless", "--master-addr", "--port"} & set(fields)
    worker = plan_fields("tiny", None, [*ARGV[:11], "1", "--master-addr", "10.0.0.1", "--headless"])
    assert fingerprint(worker) == fingerprint(plan_fields("tiny", None, ARGV))


@pytest.mark.parametrize("spelling", [
    ["--api_key", "k1", "k2"], ["--api-key=k1"], ["--API_KEY", "k1"], ["--hf_token", "k1"], ["--hf-token=k1", "k2"],
])
def test_plan_fields_hold_no_secret_flag_in_any_spelling(spelling):
    fields = plan_fields("tiny", None, [*ARGV, *spelling, "--enforce-eager"])
    assert not any("k1" in key or "k1" in value or "k2" in value for key, value in fields.items())
    assert fields["--enforce-eager"] == "" and fields["--max-model-len"] == "256"


def test_plan_fields_name_every_spelling_of_a_per_node_flag_once():
    fields = plan_fields("tiny", None, ["vllm", "serve", "/m", "--node_rank=1", "--Master-Addr", "10.0.0.2",
                                        "--max_model_len", "256", "-tp", "2"])
    assert fields == {"model": "tiny", "revision": "-", "--max-model-len": "256", "--tensor-parallel-size": "2"}


def test_judge_names_rank_and_field_of_a_mismatch():
    other = node(1, [t if t != "256" else "512" for t in ARGV])
    verdict = judge(2, {0: [node(0)], 1: [other]}, final=False)
    assert not verdict.ok and verdict.code == 2
    assert "rank 1" in verdict.message and "--max-model-len" in verdict.message and "512" in verdict.message


def test_judge_names_versions_duplicates_and_missing_ranks():
    assert "vLLM version" in judge(2, {0: [node(0)], 1: [node(1, vllm_version="0.33")]}, final=False).message
    dup = judge(3, {0: [node(0)], 1: [node(1), node(1, hostname="other")]}, final=False)
    assert dup.code == 2 and "rank 1 checked in 2 times" in dup.message and "other" in dup.message
    assert judge(3, {0: [node(0)]}, final=False) is None
    missing = judge(3, {0: [node(0)]}, final=True)
    assert missing.code == 21 and "ranks 1, 2 never checked in" in missing.message
    assert judge(2, {0: [node(0)], 1: [node(1, weights_complete=False)]}, final=False).code == 2
    assert judge(2, {0: [node(0)], 1: [node(1)]}, final=False).ok


def test_api_keys_are_compared_by_a_keyed_hash_and_differing_keys_are_refused():
    mine, other = api_key_digest("key-one-xyz", SECRET), api_key_digest("key-two-xyz", SECRET)
    assert "key-one" not in mine and mine == api_key_digest("key-one-xyz", SECRET)
    assert mine != api_key_digest("key-one-xyz", GroupSecret(b"another-secret-0123456789", "t"))
    assert api_key_digest("key-one-xyz", None).startswith("scrypt:") and "key-one" not in api_key_digest("key-one-xyz", None)
    refused = judge(2, {0: [node(0, api_key_digest=mine)], 1: [node(1, api_key_digest=other)]}, final=False)
    assert refused.code == 2 and "rank 1 has another API key than the leader" in refused.message
    assert "key-" not in refused.message
    assert judge(2, {0: [node(0, api_key_digest=mine)], 1: [node(1, api_key_digest=mine)]}, final=False).ok
    # A headless worker without a key (it serves no API) agrees with a leader that has one.
    assert judge(2, {0: [node(0, api_key_digest=mine)], 1: [node(1)]}, final=False).ok


@pytest.fixture
def stores():
    port = free_port()
    leader = GroupStore.host("127.0.0.1", port, secret=SECRET, log=LOG)
    worker = GroupStore.join("127.0.0.1", port, timeout_s=5, secret=SECRET, log=LOG)
    outsider = GroupStore.join("127.0.0.1", port, timeout_s=5, secret=GroupSecret(b"not-the-group-secret!!", "x"), log=LOG)
    yield leader, worker, outsider, port
    leader.close()


def test_signed_messages_pass_and_forged_ones_change_nothing(stores, caplog):
    leader, worker, outsider, _ = stores
    outsider.check_in(node(1, hostname="forger"))  # before the real one: slot 1
    assert worker.check_in(node(1)) == 2
    assert [n.hostname for n in leader.arrivals(1, 2)[1]] == ["n1"]  # the forged one is not a duplicate
    outsider.announce_stop(1, StopNotice(1, StopKind.REQUESTED, "forged stop"))
    assert leader.stop_notice(1) is None
    worker.beat(1, 1, 7)
    assert leader.heartbeat(1, 1) == 7
    outsider.beat(1, 1, 99)  # overwrites the value: read as no genuine heartbeat, never as fresh
    assert leader.heartbeat(1, 1) == -1
    first = worker.announce_stop(1, StopNotice(1, StopKind.LOST, "vLLM on rank 1 exited", by=1))
    assert leader.announce_stop(1, StopNotice(0, StopKind.REQUESTED, "SIGTERM", by=0)) == first == leader.stop_notice(1)
    assert leader.forged >= 3
    warnings = [r for r in caplog.records if "group secret's tag" in r.getMessage()]
    assert len(warnings) == 2  # once per reader (the leader and the worker each met forged values)


def test_rounds_are_apart(stores):
    leader, worker, _, _ = stores
    worker.announce_stop(1, StopNotice(1, StopKind.LOST, "round 1's loss"))
    worker.check_in(node(1, round=1))
    assert leader.stop_notice(2) is None and leader.arrivals(2, 2) == {}
    assert 1 in leader.arrivals(1, 2)


def test_the_store_listens_on_the_groups_address_only(stores):
    _, _, _, port = stores
    lines = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    assert f"127.0.0.1:{port}" in lines and f"0.0.0.0:{port}" not in lines and f"*:{port}" not in lines


def test_a_taken_store_port_is_exit_2_naming_the_master_port(stores):
    _, _, _, port = stores
    with pytest.raises(StorePortTakenError) as caught:
        GroupStore.host("127.0.0.1", port, secret=None)
    assert caught.value.exit_code == 2 and "--master-port" in caught.value.message and "--port " not in caught.value.message


class _RecordingStore:
    """Stands in for torch's TCPStore client: the calls a GroupStore makes, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def set(self, key: str, value: str) -> None:
        self.calls.append(("set", key))

    def check(self, keys: list[str]) -> bool:
        self.calls.append(("check", tuple(keys)))
        return True


def test_every_put_waits_for_the_stores_answer_on_its_own_connection():
    """TCPStore's set is sent without waiting for an answer, so a reader on another connection
    could miss a value whose put already returned (a heartbeat read as absent under load). Each
    put is therefore followed by a call the store does answer, after applying the set."""
    recorder = _RecordingStore()
    store = GroupStore(recorder, secret=None, log=LOG)
    store.beat(1, 1, 7)
    store.acknowledge(2, 1)
    assert recorder.calls == [
        ("set", "kaito/v2/r1/beat/1"), ("check", ("kaito/v2/r1/beat/1",)),
        ("set", "kaito/v2/r2/seen/1"), ("check", ("kaito/v2/r2/seen/1",)),
    ]
