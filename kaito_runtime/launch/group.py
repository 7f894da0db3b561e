"""A node's life in its group, from the weights being ready to its exit: meet at the leader's
store (launch/group_store.py), then keep a heartbeat and watch the peers while vLLM runs.

vLLM's mp backend notices a dead node late or never (a headless worker outlives its head, an
idle leader misses a dead worker; docs/multi-node.md), and a StatefulSet or LeaderWorkerSet can
restart a broken group only when its pods exit. So every launcher watches:

* the leader's launcher watches every worker's heartbeat, each worker's watches the leader's;
* a launcher whose vLLM exits, or that is asked to stop (SIGTERM/SIGINT), posts a stop notice
  (the first one stands) and every other launcher stops its own vLLM;
* a heartbeat that does not change for ``peer_timeout_s`` counts as a lost member, and so does
  the leader's store going away (the leader's launcher is gone).

States (GroupState): meeting -> running -> ending -> ended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from kaito_runtime.errors import GroupMemberLostError, GroupMismatchError, RendezvousTimeoutError
from kaito_runtime.launch.rendezvous import dns_lookup, is_ip
from kaito_runtime.launch.group_store import CheckIn, GroupStore, StopNotice, StoreUnreachable, Verdict, meet
from kaito_runtime.launch.supervisor import StopRequest
from kaito_runtime.types import Topology

DEFAULT_PEER_TIMEOUT_S = 15.0
BEAT_INTERVAL_S = 0.5
# How long the leader keeps its store up after its own vLLM stopped, so that every worker can
# read why the group ends (they acknowledge within one beat; this is only the upper bound).
LEADER_LINGER_S = 5.0
_JOIN_TRY_S = 5.0  # one connect attempt to the leader's store; progress is logged between tries
_PROGRESS_EVERY_S = 15.0


def store_port(topology: Topology) -> int:
    return topology.group_store_port


class GroupState(Enum):
    MEETING = "meeting"  # checking in, waiting for the leader's verdict
    RUNNING = "running"  # released; vLLM runs, heartbeats go both ways
    ENDING = "ending"  # a stop notice is out (ours or a peer's); vLLM is being stopped
    ENDED = "ended"


@dataclass(frozen=True)
class GroupStop:
    """Why this node's vLLM must stop because of the group."""

    rank: int  # the node that ended the group
    kind: str  # "lost" (its vLLM exited or its launcher went silent), "requested" (a signal), "duplicate"
    reason: str

    @property
    def exit_code(self) -> int:
        """A stop someone asked for is graceful everywhere (0); a rank that checked in twice is
        bad input (2); a lost member is exit 22."""
        if self.kind == "requested":
            return 0
        return GroupMismatchError.exit_code if self.kind == "duplicate" else GroupMemberLostError.exit_code

    def as_request(self) -> StopRequest:
        return StopRequest(reason=self.reason, exit_code=self.exit_code)


def open_store(topology: Topology, leader: str, *, timeout_s: float, log: logging.Logger) -> GroupStore:
    """The leader hosts the store; a worker connects to ``leader`` (a name or an IP), retrying
    until ``timeout_s`` (the leader may still be fetching its weights)."""
    port = store_port(topology)
    if topology.is_leader:
        try:
            store = GroupStore.host(port)
        except StoreUnreachable as exc:
            raise RendezvousTimeoutError(
                f"The group's store cannot listen on port {port} on the leader",
                why=str(exc),
                fix=f"free port {port} (the master port + 1) or choose another --master-port on every node",
            ) from None
        log.info("group store listening on port %d for %d nodes", port, topology.nnodes)
        return store
    return join_store(leader, port, timeout_s=timeout_s, log=log)


def join_store(leader: str, port: int, *, timeout_s: float, log: logging.Logger,
               resolver: Callable[[str], Sequence[str]] = dns_lookup) -> GroupStore:
    """A worker's connection to the leader's store, retried until ``timeout_s`` with a progress
    line every 15 s. A host name is looked up again on every try, so a leader pod recreated with
    a new IP is still found."""
    started = time.monotonic()
    last_progress = started
    while True:
        left = timeout_s - (time.monotonic() - started)
        ip, problem = leader, ""
        if not is_ip(leader):
            try:
                found = list(resolver(leader))
                ip = found[0] if found else ""
                problem = "" if found else "DNS: no address"
            except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
                ip, problem = "", f"DNS: {exc}"
        if ip:
            try:
                store = GroupStore.join(ip, port, timeout_s=max(1.0, min(_JOIN_TRY_S, left)))
                log.info("joined the group store on the leader %s:%d after %.0f s", ip, port, time.monotonic() - started)
                return store
            except StoreUnreachable as exc:
                problem = str(exc)
        now = time.monotonic()
        shown = leader if ip in ("", leader) else f"{leader} ({ip})"
        if now - started >= timeout_s:
            raise RendezvousTimeoutError(
                f"The leader's group store {shown}:{port} did not answer within {now - started:.0f} s",
                why=f"the leader's launcher opens it once it has planned its launch; the last try said: {problem}",
                fix=f"check the leader's log (did it start? fail?) and that TCP port {port} is open "
                "between the nodes; or raise --rendezvous-timeout / KAITO_RENDEZVOUS_TIMEOUT",
            ) from None
        if now - last_progress >= _PROGRESS_EVERY_S:
            log.info("waiting for the leader's group store %s:%d (%.0f s): %s", shown, port, now - started, problem)
            last_progress = now
        time.sleep(min(1.0, max(0.0, timeout_s - (now - started))))


def leader_request(store: GroupStore, *, timeout_s: float) -> dict:
    """What the leader published for workers started with --join (it publishes it as soon as its
    store is open, so this waits only for a leader that is still planning)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            published = store.leader_request()
        except StoreUnreachable as exc:
            raise GroupMemberLostError("The leader's group store stopped answering before it said what the group serves",
                                       why=str(exc), fix="check the leader's log; the group restarts as one unit") from None
        if published is not None:
            return published
        if time.monotonic() >= deadline:
            raise RendezvousTimeoutError("The leader did not publish what the group serves in time",
                                         why="a worker started with --join learns the model and settings from the leader",
                                         fix="check the leader's log; or raise --rendezvous-timeout")
        time.sleep(0.2)


class GroupMember:
    """This node in a running group: its heartbeat, its watch over the peers, the stop notice."""

    def __init__(self, store: GroupStore, topology: Topology, *, peer_timeout_s: float, log: logging.Logger,
                 beat_interval_s: float = BEAT_INTERVAL_S) -> None:
        self.store = store
        self.rank = topology.node_rank
        self.nnodes = topology.nnodes
        self.peer_timeout_s = peer_timeout_s
        self.beat_interval_s = beat_interval_s
        self.log = log
        self.state = GroupState.MEETING
        self._stop: GroupStop | None = None
        self._ended_by_peer = False  # the group ended because of another node: stop our vLLM
        self._asked: str | None = None  # a signal's reason, posted by the watch thread
        self._posted = False
        self._vllm_alive: Callable[[], bool] = lambda: False
        self._last_seen: dict[int, tuple[int, float]] = {}
        self._leader_fresh_at: float | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def watched(self) -> list[int]:
        return [r for r in range(1, self.nnodes)] if self.rank == 0 else [0]

    def meet(self, me: CheckIn, *, timeout_s: float) -> Verdict:
        verdict = meet(self.store, me, self.nnodes, timeout_s=timeout_s)
        self.log.info("group released: %s", verdict.message)
        return verdict

    # -- while vLLM runs --

    def start(self, vllm_alive: Callable[[], bool]) -> None:
        """Begin the heartbeat and the watch (call once vLLM's process exists)."""
        self._vllm_alive = vllm_alive
        now = time.monotonic()
        self._last_seen = {rank: (-1, now) for rank in self.watched}
        self._leader_fresh_at = now
        self.state = GroupState.RUNNING
        self._thread = threading.Thread(target=self._watch, name="group-watch", daemon=True)
        self._thread.start()

    def stop_request(self) -> StopRequest | None:
        """For the supervisor's ``stop_when``: a StopRequest once a peer ended the group."""
        stop = self._stop
        return stop.as_request() if stop is not None and self._ended_by_peer else None

    def asked_to_stop(self, signum: int) -> None:
        """From the signal handler: only a flag; the watch thread posts the notice."""
        import signal

        if self._asked is None:
            self._asked = f"rank {self.rank} was asked to stop ({signal.Signals(signum).name})"

    def health(self) -> tuple[bool, str]:
        """A worker's /health: its vLLM alive and the leader's heartbeat fresh, no stop notice."""
        if self._stop is not None:
            return False, self._stop.reason
        if not self._vllm_alive():
            return False, f"vLLM on rank {self.rank} is not running"
        fresh = self._leader_fresh_at
        if fresh is None or time.monotonic() - fresh > self.peer_timeout_s:
            return False, f"no heartbeat from the leader (rank 0) for over {self.peer_timeout_s:g} s"
        return True, "ok"

    def _post(self, notice: StopNotice) -> None:
        with self._lock:
            if self._posted:
                return
            self._posted = True
        notice = replace(notice, by=self.rank)
        try:
            first = self.store.announce_stop(notice)
        except StoreUnreachable:
            first = notice
        if self._stop is None:
            self._stop = GroupStop(first.rank, first.kind, first.reason)
            self._ended_by_peer = first.by != self.rank
        self.state = GroupState.ENDING

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                self._tick()
            except StoreUnreachable as exc:
                if self._stop is None and self.rank != 0:
                    self._stop = GroupStop(0, "lost", f"the leader (rank 0) is gone: its launcher's group store stopped answering ({exc})")
                    self._ended_by_peer = True
                    self.state = GroupState.ENDING
                    self.log.error("group member lost: %s", self._stop.reason)
                if self.rank != 0:
                    return
            self._done.wait(self.beat_interval_s)

    def _tick(self) -> None:
        if self._asked is not None and not self._posted:
            self._post(StopNotice(self.rank, "requested", self._asked))
        if self._vllm_alive() and self._stop is None:
            self.store.beat(self.rank)
        if self._stop is None:
            notice = self.store.stop_notice()
            if notice is not None and notice.by != self.rank:
                self._stop = GroupStop(notice.rank, notice.kind, notice.reason)
                self._ended_by_peer = True
                self.state = GroupState.ENDING
                level = logging.INFO if notice.kind == "requested" else logging.ERROR
                self.log.log(level, "group %s: %s", "stopping" if notice.kind == "requested" else "member lost", notice.reason)
        if self._stop is not None and self.rank != 0:
            self.store.acknowledge(self.rank)
        if self._stop is not None:
            return
        now = time.monotonic()
        for rank in self.watched:
            count = self.store.heartbeat(rank)
            seen, since = self._last_seen[rank]
            if count != seen:
                self._last_seen[rank] = (count, now)
                if rank == 0:
                    self._leader_fresh_at = now
            elif now - since > self.peer_timeout_s:
                self.log.error("group member lost: rank %d sent no heartbeat for %.0f s", rank, now - since)
                self._post(StopNotice(rank, "lost", f"rank {rank}'s launcher sent no heartbeat for "
                                      f"{now - since:.0f} s (--peer-timeout {self.peer_timeout_s:g} s)"))
                self._ended_by_peer = True  # a peer's loss ends this node's vLLM too
                return

    # -- the end --

    def finish(self, *, vllm_exit: str | None, signalled: bool) -> GroupStop | None:
        """After this node's vLLM has stopped: post why (unless a peer already ended the group),
        and on the leader keep the store up until every worker has read it. Returns the stop
        that ended the group (None when nothing did, which cannot happen once vLLM ran)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if not self._ended_by_peer:
            if signalled or self._asked is not None:
                notice = StopNotice(self.rank, "requested", self._asked or f"rank {self.rank} was asked to stop")
            else:
                notice = StopNotice(self.rank, "lost", f"vLLM on rank {self.rank} exited ({vllm_exit})")
            self._post(notice)
        if self.rank != 0:
            try:
                self.store.acknowledge(self.rank)
            except StoreUnreachable:
                pass
        if self.rank == 0:
            deadline = time.monotonic() + LEADER_LINGER_S
            waiting = set(range(1, self.nnodes))
            while waiting and time.monotonic() < deadline:
                try:
                    waiting = {rank for rank in waiting if not self.store.acknowledged(rank)}
                except StoreUnreachable:
                    break
                if waiting:
                    time.sleep(0.1)
            if waiting:
                self.log.warning("rank%s %s did not confirm the stop within %g s", "s" if len(waiting) > 1 else "",
                                 ", ".join(map(str, sorted(waiting))), LEADER_LINGER_S)
        self.state = GroupState.ENDED
        return self._stop


__all__ = ["DEFAULT_PEER_TIMEOUT_S", "GroupMember", "GroupState", "GroupStop", "join_store", "leader_request",
           "open_store", "store_port"]
