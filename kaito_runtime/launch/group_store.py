"""The group's meeting point: check-in, the leader's verdict and heartbeats in torch.distributed's
TCPStore (the store behind torchrun's c10d rendezvous), hosted by the leader's launcher.

The only module that imports torch, and only when a store is opened (multi-node launches);
plans and single-node launches never reach it. Every key lives under ``kaito/v1/``
(docs/multi-node.md lists them):

  arrivals/<rank>       counter: how many nodes checked in as <rank> (> 1: a duplicate rank)
  checkin/<rank>/<n>    JSON CheckIn of the n-th node that checked in as <rank>
  leader/plan           JSON: the leader's plan fields (model, revision, vLLM argv without rank
                        flags) and fingerprint, for workers that learn the request from the leader
  leader/request        JSON: what a worker started with --join needs to plan the same launch
                        (model, revision, node count, plan options, vLLM arguments)
  verdict               JSON Verdict: the leader's release (ok) or refusal (code, message)
  heartbeat/<rank>      counter a launcher bumps every second while its vLLM runs
  stop                  JSON StopNotice: the first node that ends the group says why (first wins)
  verdict_reads         counter: how many workers have read the verdict (a refusal waits for all)
  seen/<rank>           a worker read the stop notice (the leader keeps its store up until then)

Values are compared by change, never by clock, so the nodes' clocks need not agree.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

PREFIX = "kaito/v1/"
# vLLM's multi-node flags that differ per node by design; everything else must agree.
# --api-key guards the leader's API only (a headless worker serves none); it must not travel.
RANK_FLAGS = frozenset({"--node-rank", "--headless", "--master-addr", "--host", "--port", "--model", "--api-key"})


class StoreUnreachable(Exception):
    """The store did not answer (the leader's launcher is gone, or the network is)."""


@dataclass(frozen=True)
class CheckIn:
    rank: int
    host_ip: str
    hostname: str
    resources: Mapping[str, int]  # gpu_count, gpu_memory_bytes or cpu_cores, ram_bytes
    kaito_runtime_version: str
    vllm_version: str
    plan_fields: Mapping[str, str]  # what the fingerprint hashes (see plan_fields())
    weights_complete: bool
    pid: int = field(default_factory=os.getpid)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.plan_fields)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CheckIn:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    code: int  # the exit code every node uses when not ok
    message: str
    fingerprint: str = ""  # the leader's, so a node checked in under another key can tell


@dataclass(frozen=True)
class StopNotice:
    rank: int  # the node the notice is about (the one lost, asked to stop, or duplicated)
    kind: str  # "lost" (a vLLM exited / went silent), "requested" (a signal), "duplicate"
    reason: str
    by: int = -1  # the node that posted it (the leader posts a silent worker's loss)


def plan_fields(model: str, revision: str | None, argv: Sequence[str]) -> dict[str, str]:
    """What must agree across nodes: the model, its revision and vLLM's flags without the
    per-node ones (rank, headless, master address, host, port). Flag values are kept as text
    so a mismatch can name the flag and both values; the executable and model path are not."""
    fields = {"model": model, "revision": revision or "-"}
    name: str | None = None
    for token in argv:
        if token.startswith("--"):
            name, _, value = token.partition("=")
            fields[name] = value if value else ""
            if value:
                name = None
        elif name is not None:
            fields[name] = (fields[name] + " " + token).strip()
    return {k: v for k, v in fields.items() if k not in RANK_FLAGS}


def fingerprint(fields: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True).encode()).hexdigest()[:16]


def judge(nnodes: int, arrivals: Mapping[int, Sequence[CheckIn]], *, final: bool) -> Verdict | None:
    """The leader's decision: None while ranks are still expected (and ``final`` is False).

    Order: a duplicate rank, then a mismatch against rank 0 (versions, plan fields, weights),
    then missing ranks once ``final``; all well -> released. Pure.
    """
    from kaito_runtime.errors import GroupMismatchError, RendezvousTimeoutError

    bad_input = GroupMismatchError.exit_code
    for rank in sorted(arrivals):
        nodes = arrivals[rank]
        if len(nodes) > 1:
            hosts = ", ".join(f"{n.hostname} ({n.host_ip}, pid {n.pid})" for n in nodes)
            return Verdict(False, bad_input, f"rank {rank} checked in {len(nodes)} times: {hosts}; "
                           "give every node its own --node-rank")
    leader = arrivals.get(0, ())
    if leader:
        ref = leader[0]
        for rank in sorted(arrivals):
            node = arrivals[rank][0]
            for label, mine, theirs in (
                ("kaito-runtime version", node.kaito_runtime_version, ref.kaito_runtime_version),
                ("vLLM version", node.vllm_version, ref.vllm_version),
            ):
                if mine != theirs:
                    return Verdict(False, bad_input, f"rank {rank} differs from the leader in the {label}: "
                                   f"{mine} on rank {rank}, {theirs} on rank 0")
            for key in sorted(set(node.plan_fields) | set(ref.plan_fields)):
                mine, theirs = node.plan_fields.get(key, "(not set)"), ref.plan_fields.get(key, "(not set)")
                if mine != theirs:
                    return Verdict(False, bad_input, f"rank {rank} differs from the leader in {key}: "
                                   f"{mine or '(switch)'} on rank {rank}, {theirs or '(switch)'} on rank 0; "
                                   "start every node with the same model and settings")
            if not node.weights_complete:
                return Verdict(False, bad_input, f"rank {rank} reports its weights incomplete")
    missing = [r for r in range(nnodes) if r not in arrivals]
    if missing:
        if not final:
            return None
        names = ", ".join(map(str, missing))
        return Verdict(False, RendezvousTimeoutError.exit_code,
                       f"rank{'s' if len(missing) > 1 else ''} {names} never checked in",
                       leader[0].fingerprint if leader else "")
    return Verdict(True, 0, f"all {nnodes} nodes checked in and agree", leader[0].fingerprint)


class GroupStore:
    """A connection to the group's TCPStore; every call is serialised (one socket)."""

    def __init__(self, store: object) -> None:
        self._store = store
        self._lock = threading.Lock()

    @classmethod
    def host(cls, port: int, *, timeout_s: float = 10.0) -> GroupStore:
        """The leader's store, listening on every address at ``port``."""
        return cls(_tcp_store("0.0.0.0", port, is_master=True, timeout_s=timeout_s))

    @classmethod
    def join(cls, leader_ip: str, port: int, *, timeout_s: float) -> GroupStore:
        """A worker's connection to the leader's store (tries to connect for ``timeout_s``)."""
        return cls(_tcp_store(leader_ip, port, is_master=False, timeout_s=timeout_s))

    def _call(self, method: str, *args: object) -> object:
        with self._lock:
            try:
                return getattr(self._store, method)(*args)
            except Exception as exc:  # torch raises DistNetworkError / DistStoreError / RuntimeError
                raise StoreUnreachable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    def _has(self, key: str) -> bool:
        return bool(self._call("check", [PREFIX + key]))

    def _get(self, key: str) -> bytes | None:
        return self._call("get", PREFIX + key) if self._has(key) else None  # type: ignore[return-value]

    # -- check-in and verdict --

    def check_in(self, node: CheckIn) -> int:
        """Record ``node``; returns how many nodes have checked in as its rank (1 unless duplicate)."""
        n = int(self._call("add", f"{PREFIX}arrivals/{node.rank}", 1))  # type: ignore[arg-type]
        self._call("set", f"{PREFIX}checkin/{node.rank}/{n}", node.to_json())
        return n

    def arrivals(self, nnodes: int) -> dict[int, list[CheckIn]]:
        found: dict[int, list[CheckIn]] = {}
        for rank in range(nnodes):
            count = int(self._call("add", f"{PREFIX}arrivals/{rank}", 0))  # type: ignore[arg-type]
            nodes = [self._get(f"checkin/{rank}/{n}") for n in range(1, count + 1)]
            if any(nodes):
                found[rank] = [CheckIn.from_json(text) for text in nodes if text]
        return found

    def publish_leader_plan(self, fields: Mapping[str, str]) -> None:
        self._call("set", PREFIX + "leader/plan", json.dumps({"fields": dict(fields), "fingerprint": fingerprint(fields)}))

    def leader_plan(self) -> dict | None:
        raw = self._get("leader/plan")
        return json.loads(raw) if raw else None

    def publish_request(self, request: Mapping[str, object]) -> None:
        self._call("set", PREFIX + "leader/request", json.dumps(dict(request)))

    def leader_request(self) -> dict | None:
        raw = self._get("leader/request")
        return json.loads(raw) if raw else None

    def publish_verdict(self, verdict: Verdict) -> None:
        self._call("set", PREFIX + "verdict", json.dumps(asdict(verdict)))

    def verdict(self) -> Verdict | None:
        raw = self._get("verdict")
        return Verdict(**json.loads(raw)) if raw else None

    # -- liveness --

    def beat(self, rank: int) -> int:
        return int(self._call("add", f"{PREFIX}heartbeat/{rank}", 1))  # type: ignore[arg-type]

    def heartbeat(self, rank: int) -> int:
        return int(self._call("add", f"{PREFIX}heartbeat/{rank}", 0))  # type: ignore[arg-type]

    def announce_stop(self, notice: StopNotice) -> StopNotice:
        """Say why the group ends; the first notice stands and is returned."""
        raw = self._call("compare_set", PREFIX + "stop", "", json.dumps(asdict(notice)))
        return StopNotice(**json.loads(raw))  # type: ignore[arg-type]

    def stop_notice(self) -> StopNotice | None:
        raw = self._get("stop")
        return StopNotice(**json.loads(raw)) if raw else None

    def count_verdict_read(self) -> None:
        self._call("add", PREFIX + "verdict_reads", 1)

    def verdict_reads(self) -> int:
        return int(self._call("add", PREFIX + "verdict_reads", 0))  # type: ignore[arg-type]

    def acknowledge(self, rank: int) -> None:
        self._call("set", f"{PREFIX}seen/{rank}", "1")

    def acknowledged(self, rank: int) -> bool:
        return self._has(f"seen/{rank}")


def meet(store: GroupStore, me: CheckIn, nnodes: int, *, timeout_s: float, poll_s: float = 0.2,
         settle_s: float = 0.5, linger_s: float = 5.0) -> Verdict:
    """Check in and wait for the leader's verdict (rank 0 judges and publishes it).

    Returns the release; raises GroupMismatchError (exit 2: mismatch or duplicate rank),
    RendezvousTimeoutError (21: a rank never came, or no verdict in time) or GroupMemberLostError
    (22: the leader's store went away), each naming the rank and the cause.
    """
    import time

    from kaito_runtime.errors import GroupMemberLostError, GroupMismatchError, RendezvousTimeoutError

    deadline = time.monotonic() + timeout_s
    try:
        if me.rank == 0:
            store.publish_leader_plan(me.plan_fields)
        arrival = store.check_in(me)
        verdict: Verdict | None = None
        while verdict is None:
            if me.rank == 0:
                final = time.monotonic() >= deadline
                verdict = judge(nnodes, store.arrivals(nnodes), final=final)
                if verdict is not None and verdict.ok:
                    # Everyone is here: look once more a moment later, so a second node with
                    # the same rank starting at the same time is refused before any vLLM starts.
                    time.sleep(settle_s)
                    verdict = judge(nnodes, store.arrivals(nnodes), final=final)
                if verdict is not None:
                    store.publish_verdict(verdict)
                    if not verdict.ok:
                        _wait_for_readers(store, nnodes, min(linger_s, max(0.0, deadline + linger_s - time.monotonic())))
            else:
                verdict = store.verdict()
                if verdict is not None:
                    store.count_verdict_read()
                if verdict is not None and verdict.ok and arrival > 1:
                    notice = StopNotice(me.rank, "duplicate", f"rank {me.rank} checked in twice")
                    store.announce_stop(notice)
                    verdict = Verdict(False, GroupMismatchError.exit_code, notice.reason + "; give every node its own --node-rank")
                # The leader decides at its own deadline; a worker waits a little longer for that word.
                if verdict is None and time.monotonic() >= deadline + 10 * poll_s + 5:
                    verdict = Verdict(False, RendezvousTimeoutError.exit_code, "the leader (rank 0) gave no verdict")
            if verdict is None:
                time.sleep(poll_s)
    except StoreUnreachable as exc:
        raise GroupMemberLostError(
            f"rank {me.rank}: the group's store on the leader (rank 0) stopped answering during the rendezvous",
            why=str(exc), fix="check the leader's log; the group restarts as one unit") from None
    if verdict.ok and verdict.fingerprint and verdict.fingerprint != me.fingerprint:
        verdict = Verdict(False, GroupMismatchError.exit_code,
                          f"rank {me.rank} differs from the leader's plan (fingerprint {me.fingerprint} vs {verdict.fingerprint})")
    if verdict.ok:
        return verdict
    error = GroupMismatchError if verdict.code == GroupMismatchError.exit_code else RendezvousTimeoutError
    raise error(f"The group did not start: {verdict.message}",
                why=f"rank 0 checks every node before any vLLM starts (seen on rank {me.rank})",
                fix="start every node with the same settings and a distinct --node-rank in 0..N-1; "
                "raise --rendezvous-timeout if a node is only slow")


def _wait_for_readers(store: GroupStore, nnodes: int, seconds: float) -> None:
    """The leader refused the group: keep its store up (up to ``seconds``) until every node that
    checked in has read why, so each one exits naming the cause instead of "store gone"."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        arrivals = sum(len(nodes) for rank, nodes in store.arrivals(nnodes).items() if rank != 0)
        if store.verdict_reads() >= arrivals:
            return
        time.sleep(0.1)


def preload_torch() -> None:
    """Import torch.distributed in a background thread (it takes seconds): a multi-node launch
    calls this as soon as it knows it is one, so the import overlaps planning and the weights."""

    def load() -> None:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
        try:
            import torch.distributed  # noqa: F401
        except Exception:  # the real import in _tcp_store reports it
            pass

    threading.Thread(target=load, name="preload-torch", daemon=True).start()


def _tcp_store(host: str, port: int, *, is_master: bool, timeout_s: float) -> object:
    # c10d logs every failed connect try with a C++ stack trace; our errors say it in one line.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    from torch.distributed import TCPStore

    try:
        return TCPStore(host, port, is_master=is_master, wait_for_workers=False,
                        timeout=datetime.timedelta(seconds=max(1.0, timeout_s)))
    except Exception as exc:
        raise StoreUnreachable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


__all__ = ["CheckIn", "GroupStore", "meet", "StopNotice", "StoreUnreachable", "Verdict", "fingerprint", "judge", "plan_fields"]
