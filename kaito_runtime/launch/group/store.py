"""The group's meeting point: check-ins, the leader's verdict, heartbeats and stop notices in
torch.distributed's TCPStore (the store behind torchrun's c10d rendezvous), hosted by the leader's
launcher on the group's address at the master port + 1.

The only module that imports torch, and only when a store is opened (multi-node launches);
plans and single-node launches never reach it. Every key lives under ``kaito/v2/``; everything a
round writes is under ``r<round>/``, so a late message from an old round can never count in a
new one (docs/multi-node.md lists the keys):

  leader/request              what a worker started with --join needs (no secret, ever)
  round                       the round the group meets or runs in now (the leader's word)
  r<N>/leader                 the leader's node count for round N (a worker outside it is told)
  r<N>/arrivals/<rank>        counter: how many nodes checked in as <rank> (> 1: a duplicate rank)
  r<N>/checkin/<rank>/<n>     the n-th CheckIn as <rank>
  r<N>/verdict                the leader's release (ok) or refusal (code, message)
  r<N>/verdict_reads          counter: workers that read the verdict (a refusal waits for all)
  r<N>/beat/<rank>            a launcher's heartbeat count (it changes twice a second)
  r<N>/stops, r<N>/stop/<n>   counter and stop notices; the first genuine one stands
  r<N>/seen/<rank>            a worker read the stop notice

Every value is a small JSON envelope ``{"v": text, "tag": hmac}``: with a group secret the tag is
an HMAC over the key and the text, and a reader drops (and logs once) a value whose tag does not
match, so a forged check-in, heartbeat, verdict or stop notice changes nothing. Without a secret
the tag is empty. No secret enters the store in a form that can be reversed: the vLLM API key is
compared by ``api_key_digest``, the Hugging Face token never travels.

Values are compared by change, never by clock, so the nodes' clocks need not agree. Every call
has a deadline (``call_deadline_s``): a store whose host is frozen or cut off raises
StoreUnreachable instead of blocking the caller forever, and the connection is then spent.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum

from kaito_runtime.errors import GroupMemberLostError, GroupMismatchError, NoRouteError, RendezvousTimeoutError, StorePortTakenError
from kaito_runtime.launch.group.addresses import Unreachable
from kaito_runtime.launch.group.secret import GroupSecret
from kaito_runtime.vllm_flags import SECRET_FLAGS, group

PREFIX = "kaito/v2/"
CALL_DEADLINE_S = 5.0
# vLLM's multi-node flags that differ per node by design (normalised names, so every spelling
# counts); everything else must agree. A secret flag (vllm_flags.SECRET_FLAGS) never becomes a
# field: the API key is compared by its digest (api-key), a node without one (a headless worker) agrees.
RANK_FLAGS = frozenset({"node-rank", "headless", "master-addr", "host", "port", "model"})
API_KEY_FIELD = "api-key"


class StoreUnreachable(Unreachable):
    """The store did not answer in time (the leader's launcher is gone, frozen, or cut off)."""


class StopKind(Enum):
    """Why a group stops; the one representation of a stop's kind (see StopNotice)."""

    LOST = "lost"  # a member's vLLM exited, or its launcher went silent
    REQUESTED = "requested"  # a signal (a pod deleted, a rolling update): graceful everywhere
    DUPLICATE = "duplicate"  # a rank checked in twice after the release: bad input

    @property
    def exit_code(self) -> int:
        if self is StopKind.REQUESTED:
            return 0
        return GroupMismatchError.exit_code if self is StopKind.DUPLICATE else GroupMemberLostError.exit_code


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
    round: int = 1
    pid: int = field(default_factory=os.getpid)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.plan_fields)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> CheckIn:
        return cls(**data)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    code: int  # the exit code every node uses when not ok
    message: str
    fingerprint: str = ""  # the leader's, so a node checked in under another key can tell


@dataclass(frozen=True)
class StopNotice:
    """A stop: who it is about, why, and who posted it (the one form a stop has)."""

    rank: int  # the node the notice is about (the one lost, asked to stop, or duplicated)
    kind: StopKind
    reason: str
    by: int = -1  # the node that posted it (the leader posts a silent worker's loss)
    restart: bool = False  # a loss after which the group meets again in the next round

    @property
    def exit_code(self) -> int:
        return self.kind.exit_code

    def to_dict(self) -> dict:
        return {"rank": self.rank, "kind": self.kind.value, "reason": self.reason, "by": self.by, "restart": self.restart}

    @classmethod
    def from_dict(cls, data: Mapping) -> StopNotice:
        return cls(int(data["rank"]), StopKind(data["kind"]), str(data["reason"]), int(data.get("by", -1)),
                   bool(data.get("restart", False)))


def plan_fields(model: str, revision: str | None, argv: Sequence[str], *, api_key_digest: str | None = None) -> dict[str, str]:
    """What must agree across nodes: the model, its revision and vLLM's flags without the
    per-node ones (rank, headless, master address, host, port). Flag values are kept as text
    so a mismatch can name the flag and both values; the executable and model path are not.
    ``api_key_digest``: the node's API key as ``api_key_digest`` made it (never the key)."""
    kept = {"model": model, "revision": revision or "-"}
    for arg in group(argv):
        if arg.name is not None and arg.name not in RANK_FLAGS and arg.name not in SECRET_FLAGS:
            kept[f"--{arg.name}"] = " ".join(arg.values)
    if api_key_digest:
        kept[API_KEY_FIELD] = api_key_digest
    return kept


def fingerprint(fields: Mapping[str, str]) -> str:
    # The API key's digest is compared on its own (only where both nodes have one).
    shared = {k: v for k, v in fields.items() if k != API_KEY_FIELD}
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


def judge(nnodes: int, arrivals: Mapping[int, Sequence[CheckIn]], *, final: bool) -> Verdict | None:
    """The leader's decision: None while ranks are still expected (and ``final`` is False).

    Order: a duplicate rank, then a mismatch against rank 0 (versions, plan fields, API keys,
    weights), then missing ranks once ``final``; all well -> released. Pure.
    """
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
            for key in sorted((set(node.plan_fields) | set(ref.plan_fields)) - {API_KEY_FIELD}):
                mine, theirs = node.plan_fields.get(key, "(not set)"), ref.plan_fields.get(key, "(not set)")
                if mine != theirs:
                    return Verdict(False, bad_input, f"rank {rank} differs from the leader in {key}: "
                                   f"{mine or '(switch)'} on rank {rank}, {theirs or '(switch)'} on rank 0; "
                                   "start every node with the same model and settings")
            mine, theirs = node.plan_fields.get(API_KEY_FIELD), ref.plan_fields.get(API_KEY_FIELD)
            if mine and theirs and mine != theirs:
                return Verdict(False, bad_input, f"rank {rank} has another API key than the leader (compared "
                               "by a keyed hash; the keys never travel); give every node the same --api-key")
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


class _Caller:
    """Runs the store's calls on one thread of its own, so that each call can have a deadline:
    torch's TCPStore client blocks without limit on a host that is frozen or cut off. A call past
    its deadline spends the connection (its thread stays stuck in torch); every later call fails."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._broken: str | None = None
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            job, done, box = self._jobs.get()
            try:
                box.append((True, job()))
            except BaseException as exc:  # handed to the caller
                box.append((False, exc))
            done.set()

    def call(self, job: Callable[[], object], deadline_s: float, what: str) -> object:
        if self._broken is not None:
            raise StoreUnreachable(self._broken)
        done, box = threading.Event(), []
        self._jobs.put((job, done, box))
        if not done.wait(deadline_s):
            self._broken = f"no answer to {what} within {deadline_s:g} s"
            raise StoreUnreachable(self._broken)
        ok, value = box[0]
        if ok:
            return value
        text = str(value).splitlines()[0] if str(value) else type(value).__name__
        raise StoreUnreachable(text)  # torch raises DistNetworkError / DistStoreError / RuntimeError


class GroupStore:
    """A connection to the group's TCPStore: signed values, round-scoped keys, calls with a deadline."""

    def __init__(self, store: object, *, secret: GroupSecret | None, call_deadline_s: float = CALL_DEADLINE_S,
                 log: logging.Logger | None = None) -> None:
        self._store = store
        self.secret = secret
        self.call_deadline_s = call_deadline_s
        self._caller = _Caller("group-store")
        self._log = log or logging.getLogger("kaito_runtime")
        self.forged = 0  # values dropped because their tag did not match
        self._forged_logged = False

    @classmethod
    def host(cls, address: str, port: int, *, secret: GroupSecret | None, log: logging.Logger | None = None,
             call_deadline_s: float = CALL_DEADLINE_S) -> GroupStore:
        """The leader's store, listening on ``address`` (the group's address, not every
        interface) at ``port``. Raises StorePortTakenError (exit 2, names --master-port) when
        the port is in use, NoRouteError when this machine does not have ``address``."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of an earlier store is no conflict
            sock.bind((address, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise StorePortTakenError(
                    f"The group store's port {port} on {address} is already in use",
                    why="the leader hosts the group's store at the master port + 1 (another group's leader or an "
                    "earlier kaito-run may still hold it)",
                    fix=f"stop that process, or choose another --master-port (KAITO_MASTER_PORT) on every node "
                    f"of the group (it uses {port - 1} and {port})",
                ) from None
            raise NoRouteError(f"The leader cannot listen for its group on {address}:{port} ({exc.strerror or exc})",
                               why="the group's address is the one the workers reach the leader at",
                               fix="check --leader-address / VLLM_HOST_IP on the leader") from None
        try:
            store = _tcp_store(address, port, is_master=True, timeout_s=call_deadline_s, listen_fd=sock.fileno())
        except StoreUnreachable as exc:
            sock.close()
            raise StorePortTakenError(f"The group store could not start on {address}:{port}", why=str(exc),
                                      fix="choose another --master-port (KAITO_MASTER_PORT) on every node") from None
        hosted = cls(store, secret=secret, call_deadline_s=call_deadline_s, log=log)
        hosted._socket = sock  # torch uses the descriptor; keep the object alive with the store
        return hosted

    @classmethod
    def join(cls, leader_ip: str, port: int, *, timeout_s: float, secret: GroupSecret | None,
             log: logging.Logger | None = None, call_deadline_s: float = CALL_DEADLINE_S) -> GroupStore:
        """A worker's connection to the leader's store (tries to connect for ``timeout_s``)."""
        return cls(_tcp_store(leader_ip, port, is_master=False, timeout_s=timeout_s), secret=secret,
                   call_deadline_s=call_deadline_s, log=log)

    # -- the wire --

    def _call(self, method: str, *args: object) -> object:
        fn = getattr(self._store, method)
        return self._caller.call(lambda: fn(*args), self.call_deadline_s, method)

    def _count(self, key: str, by: int = 0) -> int:
        return int(self._call("add", PREFIX + key, by))  # type: ignore[arg-type]

    def _put(self, key: str, value: Mapping) -> None:
        text = json.dumps(dict(value), sort_keys=True)
        tag = self.secret.tag(PREFIX + key, text) if self.secret is not None else ""
        self._call("set", PREFIX + key, json.dumps({"v": text, "tag": tag}))
        # TCPStore's set does not wait for the store's answer, so a reader on another connection
        # could still miss it; a check on this connection is answered only after the set is applied.
        self._call("check", [PREFIX + key])

    def _read(self, key: str) -> dict | None:
        """The value at ``key``; None when absent or not genuine (logged once)."""
        if not self._call("check", [PREFIX + key]):
            return None
        raw = self._call("get", PREFIX + key)
        try:
            envelope = json.loads(raw)  # type: ignore[arg-type]
            text, tag = envelope["v"], envelope["tag"]
            if self.secret is not None and not self.secret.matches(PREFIX + key, text, str(tag)):
                raise ValueError("tag")
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("shape")
            return value
        except (ValueError, KeyError, TypeError):
            self.forged += 1
            if not self._forged_logged:
                self._forged_logged = True
                self._log.warning("ignored a value at %s%s in the group's store that %s (further ones are "
                                  "ignored without a word; count in the final line)", PREFIX, key,
                                  "does not carry the group secret's tag" if self.secret else "is not a group message")
            return None

    # -- what --join workers learn --

    def publish_request(self, request: Mapping[str, object]) -> None:
        self._put("leader/request", request)

    def leader_request(self) -> dict | None:
        return self._read("leader/request")

    # -- rounds --

    def publish_round(self, round_: int) -> None:
        """The leader: the round the group meets in now (a replaced member checks in there)."""
        self._put("round", {"round": round_})

    def put_progress(self, round_: int, rank: int, text: str) -> None:
        """A worker that has not checked in yet: what it is doing (its weights step's progress)."""
        self._put(f"r{round_}/progress/{rank}", {"text": text[:200]})

    def progress_of(self, round_: int, rank: int) -> str | None:
        found = self._read(f"r{round_}/progress/{rank}")
        text = found.get("text") if found else None
        return text[:200] if isinstance(text, str) else None

    def current_round(self) -> int:
        found = self._read("round")
        return int(found["round"]) if found and isinstance(found.get("round"), int) else 1

    # -- check-in and verdict (round-scoped) --

    def publish_leader(self, round_: int, nnodes: int) -> None:
        self._put(f"r{round_}/leader", {"nnodes": nnodes})

    def leader_nnodes(self, round_: int) -> int | None:
        found = self._read(f"r{round_}/leader")
        return int(found["nnodes"]) if found else None

    def check_in(self, node: CheckIn) -> int:
        """Record ``node`` in its round; returns its slot (1 unless its rank checked in before)."""
        n = self._count(f"r{node.round}/arrivals/{node.rank}", 1)
        self._put(f"r{node.round}/checkin/{node.rank}/{n}", node.to_dict())
        return n

    def check_ins(self, round_: int, rank: int) -> list[tuple[int, CheckIn]]:
        """The genuine check-ins of ``rank`` in ``round_``, with their slots."""
        found = []
        for n in range(1, self._count(f"r{round_}/arrivals/{rank}") + 1):
            value = self._read(f"r{round_}/checkin/{rank}/{n}")
            if value is None:
                continue
            try:
                node = CheckIn.from_dict(value)
            except TypeError:
                continue
            if node.rank == rank and node.round == round_:
                found.append((n, node))
        return found

    def arrivals(self, round_: int, nnodes: int) -> dict[int, list[CheckIn]]:
        found: dict[int, list[CheckIn]] = {}
        for rank in range(nnodes):
            nodes = [node for _, node in self.check_ins(round_, rank)]
            if nodes:
                found[rank] = nodes
        return found

    def publish_verdict(self, round_: int, verdict: Verdict) -> None:
        self._put(f"r{round_}/verdict", asdict(verdict))

    def verdict(self, round_: int) -> Verdict | None:
        found = self._read(f"r{round_}/verdict")
        try:
            return Verdict(**found) if found else None
        except TypeError:
            return None

    def count_verdict_read(self, round_: int) -> None:
        self._count(f"r{round_}/verdict_reads", 1)

    def verdict_reads(self, round_: int) -> int:
        return self._count(f"r{round_}/verdict_reads")

    # -- liveness --

    def beat(self, round_: int, rank: int, count: int, state: str = "running", serving: bool = False) -> None:
        """``state``: the sender's GroupState value (a draining node says so in every beat);
        ``serving``: the leader's vLLM answers in this round (its readiness check passed)."""
        self._put(f"r{round_}/beat/{rank}", {"n": count, "state": state, **({"serving": True} if serving else {})})

    def heartbeat(self, round_: int, rank: int) -> int:
        """The last genuine heartbeat count of ``rank`` (-1 before its first)."""
        return self.pulse(round_, rank)[0]

    def pulse(self, round_: int, rank: int) -> tuple[int, str, bool]:
        """The last genuine heartbeat of ``rank``: its count (-1 before its first), the state it
        said it was in ("" before its first) and whether it said it serves."""
        found = self._read(f"r{round_}/beat/{rank}")
        if not found or not isinstance(found.get("n"), int):
            return -1, "", False
        state = found.get("state")
        return int(found["n"]), state if isinstance(state, str) else "", found.get("serving") is True

    def announce_stop(self, round_: int, notice: StopNotice) -> StopNotice:
        """Say why the group ends; returns the notice that stands (the first genuine one)."""
        n = self._count(f"r{round_}/stops", 1)
        self._put(f"r{round_}/stop/{n}", notice.to_dict())
        return self.stop_notice(round_) or notice

    def stop_notice(self, round_: int) -> StopNotice | None:
        for n in range(1, self._count(f"r{round_}/stops") + 1):
            value = self._read(f"r{round_}/stop/{n}")
            if value is None:
                continue
            try:
                return StopNotice.from_dict(value)
            except (KeyError, ValueError, TypeError):
                continue
        return None

    def acknowledge(self, round_: int, rank: int) -> None:
        self._put(f"r{round_}/seen/{rank}", {"rank": rank})

    def acknowledged(self, round_: int, rank: int) -> bool:
        found = self._read(f"r{round_}/seen/{rank}")
        return bool(found) and found.get("rank") == rank

    def close(self) -> None:
        sock = getattr(self, "_socket", None)
        if sock is not None:
            sock.close()


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


def _tcp_store(host: str, port: int, *, is_master: bool, timeout_s: float, listen_fd: int | None = None) -> object:
    # c10d logs every failed connect try with a C++ stack trace; our errors say it in one line.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    from torch.distributed import TCPStore

    extra = {"master_listen_fd": listen_fd} if listen_fd is not None else {}
    try:
        return TCPStore(host, port, is_master=is_master, wait_for_workers=False,
                        timeout=datetime.timedelta(seconds=max(1.0, timeout_s)), **extra)
    except Exception as exc:
        raise StoreUnreachable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


__all__ = ["CheckIn", "GroupStore", "StopKind", "StopNotice", "StoreUnreachable", "Verdict", "fingerprint", "judge",
           "plan_fields", "preload_torch"]
