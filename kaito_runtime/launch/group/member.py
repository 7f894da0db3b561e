"""The owner of this node's place in its group: ``Group`` opens (leader) or joins (worker) the
leader's store, checks in, watches the peers while vLLM runs and leaves. The API calls it at four
points (open, meet, the supervisor's hooks, leave); nothing else touches the store.

vLLM's mp backend notices a dead node late or never (a headless worker outlives its head, an
idle leader misses a dead worker; docs/multi-node.md), and a StatefulSet or LeaderWorkerSet can
restart a broken group only when its pods exit. So every launcher watches:

* the leader's launcher watches every worker's heartbeat, each worker's watches the leader's;
* a launcher whose vLLM exits posts a stop notice at once, before it sweeps vLLM's leftovers (the
  first genuine notice stands), and every other launcher stops its own vLLM;
* a stop that is asked for (SIGTERM: a pod deleted) drains: the node says "draining" in its
  heartbeat; the leader's vLLM finishes its requests (--shutdown-timeout) and the leader posts its
  stop notice only once its vLLM has exited; a worker holds its SIGTERM (its headless vLLM serves
  the leader's drain) until that notice or the end of its grace period less the drain margin; a
  leader that sees a worker draining drains too. Every node exits 0;
* a heartbeat that does not change for ``peer_timeout_s`` counts as a lost member, and so does a
  leader's store that stops answering: every store call has a deadline, so a frozen or cut-off
  leader is noticed within the peer timeout, not never.

The group meets in numbered rounds (``round``; every key of a round is its own). A lost member
(its vLLM exited or hung, its launcher went silent) ends the round; while the restart budget
lasts (``--max-restarts``), every node stops its own vLLM, keeps its weights, and the group meets
again in the next round and starts vLLM with the same plan. Only the node whose own vLLM failed
spends a restart (torchrun's rule); a healthy node restarting because of it spends none, and nor
does a silent launcher's loss (a membership change). A spent budget ends the group as before
(exit 22 everywhere, naming the rank).

States (health.GroupState): meeting -> running -> (restarting -> meeting -> running)* -> ending -> ended.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from kaito_runtime.errors import GroupMemberLostError, GroupMismatchError, RendezvousTimeoutError
from kaito_runtime.launch.group.addresses import (
    DEFAULT_TIMEOUT_S,
    RendezvousInfo,
    Resolver,
    addresses,
    check_launchable,
    dns_lookup,
    interface_of,
    reach_leader,
)
from kaito_runtime.launch.group.health import GroupState, HealthReport, judge_health
from kaito_runtime.launch.group.secret import GroupSecret
from kaito_runtime.launch.group.store import (
    CALL_DEADLINE_S,
    CheckIn,
    GroupStore,
    StopKind,
    StopNotice,
    StoreUnreachable,
    Verdict,
    judge,
)
from kaito_runtime.launch.supervisor import StopRequest, SupervisorHooks
from kaito_runtime.types import Topology
from kaito_runtime.vllm_flags import without_secret_flags

DEFAULT_PEER_TIMEOUT_S = 15.0
BEAT_INTERVAL_S = 0.5
# How long the leader keeps its store up after its own vLLM stopped, so that every live worker can
# read why the group ends (they acknowledge within one beat; this is only the upper bound).
LEADER_LINGER_S = 5.0
PROGRESS_EVERY_S = 15.0
_POLL_S = 0.2
_MEET_POLL_S = 0.1  # while nodes check in and wait for the verdict: every node waits on it
MAX_BACKOFF_S = 30.0  # the wait before round N+1 doubles from 1 s up to this
_PORT_FREE_S = 60.0  # how long the leader waits for its old vLLM's master port before a new round


@dataclass(frozen=True)
class GroupSettings:
    """The blueprint of this node's group membership (what stays the same across rounds)."""

    topology: Topology
    rendezvous_timeout_s: float = DEFAULT_TIMEOUT_S
    peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S
    secret: GroupSecret | None = None
    beat_interval_s: float = BEAT_INTERVAL_S
    max_restarts: int = 0  # restarts this node may spend on failures of its own vLLM

    @property
    def hung_after_s(self) -> float:
        """How long vLLM may stay stopped (SIGSTOP, a stop signal) before it counts as hung."""
        return max(1.0, self.peer_timeout_s / 2)

    @property
    def call_deadline_s(self) -> float:
        """Each store call's deadline: well inside the peer timeout, so a frozen leader is noticed in time."""
        return max(1.0, min(CALL_DEADLINE_S, self.peer_timeout_s / 3))


@dataclass(frozen=True)
class NodeFacts:
    """What this node brings to a check-in; the owner adds its rank, round and address."""

    resources: Mapping[str, int]
    kaito_runtime_version: str
    vllm_version: str
    plan_fields: Mapping[str, str]
    weights_complete: bool = True


def public_vllm_args(args: list[str] | tuple[str, ...], secrets: tuple[str, ...] = ()) -> list[str]:
    """The vLLM arguments without any secret (an --api-key, an --hf-token, a registered secret
    value), in every spelling (vllm_flags.SECRET_FLAGS): what the leader may publish for --join workers."""
    return [token for token in without_secret_flags(args) if token not in secrets]


class Group:
    """This node in its group, from opening or joining the store to leaving it."""

    def __init__(self, settings: GroupSettings, *, env: Mapping[str, str], log: logging.Logger,
                 resolver: Resolver = dns_lookup) -> None:
        self.settings = settings
        self.topology = settings.topology
        self.rank = settings.topology.node_rank
        self.nnodes = settings.topology.nnodes
        self.log = log
        self._env = env
        self._resolver = resolver
        self.state = GroupState.MEETING
        self.round = 1
        self.restarts = 0
        self.store: GroupStore | None = None
        self.addresses: RendezvousInfo | None = None
        self._facts: NodeFacts | None = None
        self._hooks = _Hooks(self)
        self._on_serving: Callable[[], None] | None = None
        self._reset_round()

    def _reset_round(self) -> None:
        self._signalled_end = False
        self._leader_lost = False
        self._pgid = 0
        self._stopped_since: float | None = None
        self._stop: StopNotice | None = None
        self._must_stop = False  # the group ended because of another node (or we posted a peer's loss)
        self._asked: str | None = None  # a signal's reason, posted by the watch thread
        self._posted = False
        self._vllm_alive: Callable[[], bool] = lambda: False
        self._beats = 0
        self._last_seen: dict[int, tuple[int, float]] = {}
        self._peer_states: dict[int, str] = {}  # the GroupState value each watched node last sent
        self._leader_fresh_at: float | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._serving = False  # the leader's vLLM answers in this round (the leader's beats say so)
        self._serving_told = False

    @property
    def watched(self) -> list[int]:
        return list(range(1, self.nnodes)) if self.rank == 0 else [0]

    # -- before the weights: the leader opens its store --

    def check_ports(self) -> None:
        """The leader: vLLM's master port and the group store's port (the next one) are free, or
        a clear error naming --master-port (exit 2). Asked before anything slow."""
        import errno

        from kaito_runtime.errors import StorePortTakenError

        for port, what in ((self.topology.master_port, "vLLM's master port"), (self.topology.group_store_port, "the group store's port")):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("", port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        continue  # an address problem: the store or vLLM names it
                    raise StorePortTakenError(
                        f"Port {port} ({what}) is already in use on the leader",
                        why=f"a group uses --master-port {self.topology.master_port} for vLLM and the port after it "
                        "for the group's store (another group's leader or an earlier kaito-run may hold it)",
                        fix="stop that process, or choose another --master-port (KAITO_MASTER_PORT) on every node of the group",
                    ) from None

    def open(self) -> GroupStore:
        """The leader: find its address (the exported VLLM_HOST_IP, or its own name resolved),
        host the store there, and say once if the store is open (no group secret)."""
        assert self.topology.is_leader and self.topology.leader_address
        exported = check_launchable(self.topology, self._env)
        if exported:
            master = exported
            self.log.info("leader: using the exported VLLM_HOST_IP %s as the master address", exported)
        else:
            master, _ = reach_leader(self.topology.leader_address, timeout_s=self.settings.rendezvous_timeout_s,
                                     log=self.log, resolver=self._resolver)
        self.addresses = addresses(self.topology, master, exported, self.log)
        listen = master if interface_of(master) is not None or master == exported else self.addresses.host_ip
        self.store = GroupStore.host(listen, self.topology.group_store_port, secret=self.settings.secret, log=self.log,
                                     call_deadline_s=self.settings.call_deadline_s)
        self.log.info("group store listening on %s:%d for %d nodes (%s)", listen, self.topology.group_store_port,
                      self.nnodes, f"messages signed with the group secret from {self.settings.secret.source}"
                      if self.settings.secret else "open")
        self._say_if_open()
        return self.store

    def _say_if_open(self) -> None:
        if self.settings.secret is None:
            self.log.warning("no group secret (--group-secret-file / KAITO_GROUP_SECRET): anyone who can reach "
                             "the group store's port %d can read what the group serves (never a secret), check in "
                             "or stop the group; deploy/networkpolicy-two-nodes.yaml limits who can", self.topology.group_store_port)

    def publish_request(self, request: Mapping[str, object]) -> None:
        """The leader: what a --join worker needs to plan the same launch (no secret ever)."""
        from kaito_runtime.secrets import registered_secrets

        assert self.store is not None
        public = dict(request)
        public["vllm_args"] = public_vllm_args(list(request.get("vllm_args", ())), registered_secrets())  # type: ignore[arg-type]
        self.store.publish_request(public)

    # -- the meeting --

    def meet(self, facts: NodeFacts) -> RendezvousInfo:
        """Reach the leader's store (a worker), check in for this round and wait for the leader's
        verdict, all within the rendezvous timeout. Returns this node's addresses.

        Raises GroupMismatchError (2: a mismatch, a duplicate rank, a rank outside the leader's
        group), a RendezvousError (21: the leader never resolved or answered, a rank never came)
        or GroupMemberLostError (22: the leader's store went away), each naming the rank and cause.
        """
        deadline = time.monotonic() + self.settings.rendezvous_timeout_s
        self.state = GroupState.MEETING
        self._facts = facts
        try:
            if self.store is None:
                self._join(deadline)
            assert self.store is not None and self.addresses is not None
            me = CheckIn(rank=self.rank, host_ip=self.addresses.host_ip, hostname=socket.gethostname(),
                         resources=dict(facts.resources), kaito_runtime_version=facts.kaito_runtime_version,
                         vllm_version=facts.vllm_version, plan_fields=dict(facts.plan_fields),
                         weights_complete=facts.weights_complete, round=self.round)
            verdict = self._check_in(me, deadline)
        except StoreUnreachable as exc:
            raise GroupMemberLostError(
                f"rank {self.rank}: the group's store on the leader (rank 0) stopped answering during the rendezvous",
                why=str(exc), fix="check the leader's log; the group restarts as one unit") from None
        if verdict.ok and verdict.fingerprint and verdict.fingerprint != me.fingerprint:
            verdict = Verdict(False, GroupMismatchError.exit_code,
                              f"rank {self.rank} differs from the leader's plan (fingerprint {me.fingerprint} vs {verdict.fingerprint})")
        if not verdict.ok:
            self.state = GroupState.ENDED
            error = GroupMismatchError if verdict.code == GroupMismatchError.exit_code else RendezvousTimeoutError
            raise error(f"The group did not start: {verdict.message}",
                        why=f"rank 0 checks every node before any vLLM starts (seen on rank {self.rank})",
                        fix="start every node with the same settings and a distinct --node-rank in 0..N-1; "
                        "raise --rendezvous-timeout if a node is only slow")
        self.log.info("group released: %s", verdict.message)
        return self.addresses

    def _join(self, deadline: float) -> None:
        exported = check_launchable(self.topology, self._env)
        assert self.topology.leader_address
        port = self.topology.group_store_port
        ip, store = reach_leader(
            self.topology.leader_address, timeout_s=max(0.0, deadline - time.monotonic()), log=self.log,
            resolver=self._resolver, target=f"the leader's group store (port {port})",
            connect=lambda ip, t: GroupStore.join(ip, port, timeout_s=t, secret=self.settings.secret, log=self.log,
                                                  call_deadline_s=self.settings.call_deadline_s),
        )
        self.log.info("joined the group store on the leader %s:%d", ip, port)
        self.store = store
        self.addresses = addresses(self.topology, ip, exported, self.log)
        if self.settings.secret is None:
            self._say_if_open()
        self._find_round(deadline)

    def _find_round(self, deadline: float) -> None:
        """A node that joins a group already running (a replaced member: a new launcher, maybe a
        new IP) waits for the next round, which starts once the leader has counted the old
        member lost; a live node of the same rank that keeps beating is a duplicate (exit 2)."""
        assert self.store is not None
        current = self.store.current_round()
        verdict = self.store.verdict(current)
        if verdict is None or not verdict.ok:
            self.round = current
            return
        self.log.info("the group runs in round %d: waiting for it to meet again (the leader counts the old rank %d "
                      "lost within --peer-timeout)", current, self.rank)
        started = last_progress = time.monotonic()
        seen, changes = self.store.heartbeat(current, self.rank), 0
        while True:
            time.sleep(_POLL_S)
            now = time.monotonic()
            latest = self.store.current_round()
            if latest != current:
                self.round = latest
                return
            beat = self.store.heartbeat(current, self.rank)
            if beat != seen:
                seen, changes = beat, changes + 1
            # A dead old member is silent (the leader counts it lost within the peer timeout and
            # starts the next round); one whose heartbeat keeps changing is alive: this node is
            # its twin, and the group ends as for any duplicate rank (exit 2 everywhere).
            if changes >= 2:
                notice = StopNotice(self.rank, StopKind.DUPLICATE, f"rank {self.rank} checked in twice (a second node "
                                    f"with rank {self.rank} joined the running group)", by=self.rank)
                self.store.announce_stop(current, notice)
                raise GroupMismatchError(f"The group did not start: {notice.reason}",
                                         why="a live member of the group already has this rank",
                                         fix="give every node its own --node-rank")
            if now >= deadline:
                raise RendezvousTimeoutError(f"The group (round {current}) did not meet again within the rendezvous timeout",
                                             why=f"rank {self.rank} joined while the group was running",
                                             fix="check the leader's log; or raise --rendezvous-timeout")
            if now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                self.log.info("still waiting for round %d (%.0f s)", current + 1, now - started)

    def _check_in(self, me: CheckIn, deadline: float, settle_s: float = 0.25) -> Verdict:
        store = self.store
        assert store is not None
        r = self.round
        if self.rank == 0:
            store.publish_leader(r, self.nnodes)
            store.publish_round(r)
        slot = store.check_in(me)
        started = last_progress = time.monotonic()
        while True:
            now = time.monotonic()
            if self.rank == 0:
                final = now >= deadline
                arrivals = store.arrivals(r, self.nnodes)
                verdict = judge(self.nnodes, arrivals, final=final)
                if verdict is not None and verdict.ok:
                    # Everyone is here: look once more a moment later, so a second node with
                    # the same rank starting at the same time is refused before any vLLM starts.
                    time.sleep(settle_s)
                    verdict = judge(self.nnodes, store.arrivals(r, self.nnodes), final=final)
                if verdict is not None:
                    store.publish_verdict(r, verdict)
                    if not verdict.ok:
                        self._wait_for_readers(min(LEADER_LINGER_S, max(0.0, deadline + LEADER_LINGER_S - time.monotonic())))
                    return verdict
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    missing = [str(rank) for rank in range(self.nnodes) if rank not in arrivals]
                    self.log.info("round %d: waiting for rank%s %s to check in (%.0f s of %.0f s)", r,
                                  "s" if len(missing) > 1 else "", ", ".join(missing), now - started,
                                  self.settings.rendezvous_timeout_s)
            else:
                nnodes = store.leader_nnodes(r)
                if nnodes is not None and self.rank >= nnodes:
                    return Verdict(False, GroupMismatchError.exit_code,
                                   f"rank {self.rank} is outside the leader's group of {nnodes} nodes (ranks 0..{nnodes - 1}); "
                                   "give this node a rank below the leader's --nnodes, or the same --nnodes as the leader")
                verdict = store.verdict(r)
                if verdict is not None:
                    store.count_verdict_read(r)
                    if verdict.ok and any(n < slot for n, _ in store.check_ins(r, self.rank)):
                        notice = StopNotice(self.rank, StopKind.DUPLICATE, f"rank {self.rank} checked in twice", by=self.rank)
                        store.announce_stop(r, notice)
                        return Verdict(False, GroupMismatchError.exit_code, notice.reason + "; give every node its own --node-rank")
                    return verdict
                # The leader decides at its own deadline; a worker waits a little longer for that word.
                if now >= deadline + 10 * _POLL_S + 5:
                    return Verdict(False, RendezvousTimeoutError.exit_code, "the leader (rank 0) gave no verdict")
            time.sleep(_MEET_POLL_S)

    def _wait_for_readers(self, seconds: float) -> None:
        """The leader refused the group: keep its store up (up to ``seconds``) until every node that
        checked in has read why, so each one exits naming the cause instead of "store gone"."""
        assert self.store is not None
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            arrivals = sum(len(nodes) for rank, nodes in self.store.arrivals(self.round, self.nnodes).items() if rank != 0)
            if self.store.verdict_reads(self.round) >= arrivals:
                return
            time.sleep(0.1)

    # -- while vLLM runs --

    @property
    def hooks(self) -> SupervisorHooks:
        """What the supervisor gets: told when vLLM started, of signals and of vLLM's exit; asks
        whether the group wants vLLM stopped."""
        return self._hooks

    def serving(self) -> None:
        """The leader: this round's vLLM answers (its readiness check passed); its heartbeats say
        so, and every node is told through ``when_serving``."""
        self._serving = True

    def when_serving(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once per round, from the supervising thread (the supervisor's
        ``tick``), once the leader's vLLM answers: e.g. to start a standby vLLM for a next round
        without slowing this round's start."""
        self._on_serving = callback

    def figures(self) -> dict[str, object]:
        """What a metrics scrape shows of the group (size, state, round, restarts spent here);
        cheap: no store call."""
        return {"size": self.nnodes, "state": self.state.value, "round": self.round, "restarts": self.restarts}

    def health(self) -> HealthReport:
        fresh = self._leader_fresh_at
        silent = None if self.rank == 0 else (float("inf") if fresh is None else time.monotonic() - fresh)
        return judge_health(state=self.state, round_=self.round, restarts=self.restarts, rank=self.rank,
                            max_restarts=self.settings.max_restarts,
                            stop_reason=self._stop.reason if self._stop is not None else None,
                            vllm_alive=self._vllm_alive(), leader_silent_s=silent,
                            peer_timeout_s=self.settings.peer_timeout_s)

    def _start_watch(self, vllm_alive: Callable[[], bool], pgid: int) -> None:
        self._vllm_alive = vllm_alive
        self._pgid = pgid
        now = time.monotonic()
        self._last_seen = {rank: (-1, now) for rank in self.watched}
        self._leader_fresh_at = now
        self.state = GroupState.RUNNING
        self._thread = threading.Thread(target=self._watch, name="group-watch", daemon=True)
        self._thread.start()

    def _stop_request(self) -> StopRequest | None:
        stop = self._stop
        if stop is not None and self._must_stop:
            return StopRequest(reason=stop.reason, exit_code=stop.exit_code)
        if self.state is GroupState.DRAINING and self._asked is None:  # the leader drains for a worker
            return StopRequest(reason=f"{self._drain_reason()}: the leader drains first", exit_code=StopKind.REQUESTED.exit_code)
        return None

    def _nothing_to_drain(self) -> bool:
        """A member is lost: vLLM's engine waits on a peer that is gone, so no drain and no
        clean-up waits for it (the next round starts sooner)."""
        stop = self._stop
        return stop is not None and stop.kind is StopKind.LOST

    def _supervisor_tick(self) -> None:
        if self._serving and not self._serving_told and self._stop is None and self._on_serving is not None:
            self._serving_told = True
            self._on_serving()

    def _signalled(self, signum: int) -> None:
        import signal

        if self._asked is None:
            self._asked = f"rank {self.rank} was asked to stop ({signal.Signals(signum).name})"
        if self.state is GroupState.RUNNING:
            self.state = GroupState.DRAINING

    def _holds(self, signum: int) -> bool:
        """A running worker holds a SIGTERM: its headless vLLM serves the leader's drain."""
        import signal

        return signum == signal.SIGTERM and self.rank != 0 and self.state is GroupState.RUNNING

    def _drain_reason(self) -> str:
        """Why this node stops as asked: its own signal, or a worker that was asked (the leader)."""
        if self._asked is not None:
            return self._asked
        draining = [rank for rank, state in sorted(self._peer_states.items()) if state == GroupState.DRAINING.value]
        return f"rank {draining[0] if draining else '?'} was asked to stop"

    def _vllm_exited(self, returncode: int) -> None:
        """Announce first: tell the group at once that this node's vLLM is gone (the supervisor
        sweeps its leftovers afterwards)."""
        if self._stop is not None or self._posted:
            return
        from kaito_runtime.launch.supervisor import describe_exit_code

        if self._asked is not None or self.state is GroupState.DRAINING:
            self._post(StopNotice(self.rank, StopKind.REQUESTED, self._drain_reason()))
        elif self.rank != 0 and self._peer_states.get(0) == GroupState.DRAINING.value:
            # The leader drains as asked and its engine let ours go: part of that stop, not a loss.
            self._post(StopNotice(0, StopKind.REQUESTED, f"rank 0 is stopping as asked; vLLM on rank {self.rank} "
                                  "exited as it drained"))
        else:
            code = 128 - returncode if returncode < 0 else returncode  # Popen's -N: killed by signal N
            self._own_failure(f"vLLM on rank {self.rank} exited ({describe_exit_code(code)})")

    def _own_failure(self, reason: str) -> None:
        """This node's own vLLM failed: tell the group, and spend a restart if ours is the loss
        that stands and the budget allows one (otherwise the group ends)."""
        budget = self.settings.max_restarts
        again = self.restarts < budget
        if budget:
            reason += (f"; rank {self.rank} restarts the group ({self.restarts + 1} of {budget})" if again
                       else f"; rank {self.rank} has spent its {budget} restart{'s' if budget > 1 else ''}")
        self._post(StopNotice(self.rank, StopKind.LOST, reason, restart=again))
        stop = self._stop
        if again and stop is not None and stop.by == self.rank and stop.rank == self.rank:
            self.restarts += 1

    def _post(self, notice: StopNotice) -> None:
        with self._lock:
            if self._posted:
                return
            self._posted = True
        notice = replace(notice, by=self.rank)
        first = notice
        if self.store is not None:
            try:
                first = self.store.announce_stop(self.round, notice)
            except StoreUnreachable:
                pass
        if self._stop is None:
            self._stop = first
            self._must_stop = first.by != self.rank or first.rank != self.rank
        self.state = GroupState.ENDING

    def _lose(self, notice: StopNotice) -> None:
        """A peer is lost (seen by this node): record it, stop our vLLM, tell the others. A
        membership change spends no restart; with a budget at all, the group meets again."""
        notice = replace(notice, restart=self.settings.max_restarts > 0)
        self.log.error("group member lost: %s", notice.reason)
        self._post(notice)
        self._must_stop = True

    def _hung(self, now: float) -> str | None:
        """Whether a process of vLLM's group has been stopped (state T: SIGSTOP, a stop signal)
        for longer than ``hung_after_s``; a deadlock inside a running process is not seen here."""
        if not self._pgid:
            return None
        import os

        import psutil

        stopped = []
        try:  # vLLM's main process leads its group; its tree is what we look at (cheap, every beat)
            main = psutil.Process(self._pgid)
            tree = [main, *main.children(recursive=True)]
        except psutil.Error:
            tree = []
        for proc in tree:
            try:
                if proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP) and os.getpgid(proc.pid) == self._pgid:
                    stopped.append(proc.pid)
            except (psutil.Error, OSError):
                continue
        if not stopped:
            self._stopped_since = None
            return None
        if self._stopped_since is None:
            self._stopped_since = now
            return None
        if now - self._stopped_since <= self.settings.hung_after_s:
            return None
        pids = ", ".join(map(str, stopped[:5]))
        return (f"vLLM on rank {self.rank} is hung: process{'es' if len(stopped) > 1 else ''} {pids} stopped "
                f"for {now - self._stopped_since:.0f} s")

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                self._tick()
            except StoreUnreachable as exc:
                if self._stop is None and self.rank != 0:
                    # With a budget, a worker looks for the leader again (by name: a recreated
                    # leader pod is found at its new IP) and meets in the new leader's round.
                    self._stop = StopNotice(0, StopKind.LOST, "the leader (rank 0) is gone: its launcher's group store "
                                            f"stopped answering ({exc})", by=self.rank,
                                            restart=self.settings.max_restarts > 0)
                    self._leader_lost = True
                    self._must_stop = True
                    self.state = GroupState.ENDING
                    self.log.error("group member lost: %s", self._stop.reason)
                if self.rank != 0:
                    return
            self._done.wait(self.settings.beat_interval_s)

    def _tick(self) -> None:
        store = self.store
        assert store is not None
        r = self.round
        if self._stop is None and not self._vllm_alive():
            return  # the supervisor's exited hook posts the loss with vLLM's exit code at once
        hung = self._hung(time.monotonic()) if self._stop is None else None
        if hung is not None:
            self.log.error("group member lost: %s", hung)
            self._own_failure(hung)
            self._must_stop = True  # our own vLLM must be stopped (and continued so it can stop)
            return
        if self._stop is None:
            self._beats += 1
            store.beat(r, self.rank, self._beats, self.state.value, serving=self.rank == 0 and self._serving)
            notice = store.stop_notice(r)
            if notice is not None and notice.by != self.rank:
                self._stop = notice
                self._must_stop = True
                self.state = GroupState.ENDING
                level = logging.INFO if notice.kind is StopKind.REQUESTED else logging.ERROR
                self.log.log(level, "group %s: %s", "stopping" if notice.kind is StopKind.REQUESTED else "member lost", notice.reason)
        if self._stop is not None:
            if self.rank != 0:
                store.acknowledge(r, self.rank)
            return
        now = time.monotonic()
        for rank in self.watched:
            count, state, serving = store.pulse(r, rank)
            self._peer_states[rank] = state
            if rank == 0 and serving:
                self._serving = True
            if rank != 0 and state == GroupState.DRAINING.value and self.state is GroupState.RUNNING:
                self.log.info("rank %d was asked to stop: the leader drains its requests, then the group stops", rank)
                self.state = GroupState.DRAINING
            seen, since = self._last_seen[rank]
            if count != seen:
                self._last_seen[rank] = (count, now)
                if rank == 0:
                    self._leader_fresh_at = now
            elif now - since > self.settings.peer_timeout_s:
                self._lose(StopNotice(rank, StopKind.LOST, f"rank {rank}'s launcher sent no heartbeat for "
                                      f"{now - since:.0f} s (--peer-timeout {self.settings.peer_timeout_s:g} s)"))
                return

    # -- the end --

    def end_round(self, *, vllm_exit: str, signalled: bool) -> StopNotice | None:
        """After this node's vLLM has stopped: post why (unless a stop already stands), and on the
        leader keep the store up until every live worker has read it; a worker whose launcher went
        silent is not waited for. Returns the stop that ended the round (``meets_again`` says
        whether the group meets again)."""
        self._signalled_end = signalled
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.call_deadline_s + 1)
        if self._stop is None:
            if signalled or self._asked is not None or self.state is GroupState.DRAINING:
                self._post(StopNotice(self.rank, StopKind.REQUESTED, self._drain_reason() if self._asked or not signalled
                                      else f"rank {self.rank} was asked to stop"))
            else:
                self._post(StopNotice(self.rank, StopKind.LOST, f"vLLM on rank {self.rank} exited ({vllm_exit})"))
        store = self.store
        if store is not None and self.rank != 0:
            try:
                store.acknowledge(self.round, self.rank)
            except StoreUnreachable:
                pass
        if store is not None and self.rank == 0:
            self._linger(store)
        if self.meets_again:
            self.state = GroupState.RESTARTING
        return self._stop

    @property
    def meets_again(self) -> bool:
        """The round ended with a loss that restarts the group, and this node was not asked to stop."""
        stop = self._stop
        return (stop is not None and stop.kind is StopKind.LOST and stop.restart and self._asked is None
                and not self._signalled_end)

    def meet_again(self) -> RendezvousInfo:
        """The next round: wait a backoff that grows with the rounds, let the leader's old vLLM
        free its master port, check in again (same plan, same weights) and wait for the release."""
        assert self._facts is not None
        self.state = GroupState.RESTARTING
        previous = self._stop
        if self._leader_lost:
            self.store = None  # meet() joins again: the leader's name is looked up anew
        self.round += 1
        self._reset_round()
        backoff = min(MAX_BACKOFF_S, 2.0 ** (self.round - 2))
        self.log.warning("group restarting: round %d in %g s (%s; restarts spent on rank %d: %d of %d)", self.round,
                         backoff, previous.reason if previous else "", self.rank, self.restarts, self.settings.max_restarts)
        time.sleep(backoff)
        if self.rank == 0:
            self._wait_for_master_port()
        return self.meet(self._facts)

    def _wait_for_master_port(self) -> None:
        import errno

        port, end = self.topology.master_port, time.monotonic() + _PORT_FREE_S
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("", port))
                    return
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or time.monotonic() >= end:
                        return  # vLLM reports a port it cannot use in its own words
            time.sleep(0.5)

    def leave(self) -> None:
        """This node leaves the group for good."""
        store = self.store
        if store is not None and store.forged:
            self.log.warning("the group's store held %d value%s without the group secret's tag; all were ignored",
                             store.forged, "s" if store.forged > 1 else "")
        self.state = GroupState.ENDED

    def _linger(self, store: GroupStore) -> None:
        now = time.monotonic()
        dead = {self._stop.rank} if self._stop is not None and "no heartbeat" in self._stop.reason else set()
        # A worker silent for more than a few beats will not read the notice either.
        silent_after = max(3.0, 6 * self.settings.beat_interval_s)
        waiting = {rank for rank in range(1, self.nnodes)
                   if rank not in dead and now - self._last_seen.get(rank, (0, now))[1] <= silent_after}
        end = now + LEADER_LINGER_S
        while waiting and time.monotonic() < end:
            try:
                waiting = {rank for rank in waiting if not store.acknowledged(self.round, rank)}
            except StoreUnreachable:
                break
            if waiting:
                time.sleep(0.1)
        if waiting:
            self.log.warning("rank%s %s did not confirm the stop within %g s", "s" if len(waiting) > 1 else "",
                             ", ".join(map(str, sorted(waiting))), LEADER_LINGER_S)


class _Hooks(SupervisorHooks):
    def __init__(self, group: Group) -> None:
        self._group = group

    def started(self, alive: Callable[[], bool], pgid: int) -> None:
        self._group._start_watch(alive, pgid)

    def signalled(self, signum: int) -> None:
        self._group._signalled(signum)

    def holds(self, signum: int) -> bool:
        return self._group._holds(signum)

    def stop_request(self) -> StopRequest | None:
        return self._group._stop_request()

    def exited(self, returncode: int) -> None:
        self._group._vllm_exited(returncode)

    def nothing_to_drain(self) -> bool:
        return self._group._nothing_to_drain()

    def tick(self) -> None:
        self._group._supervisor_tick()


def learn_from_leader(address: str, master_port: int, *, timeout_s: float, secret: GroupSecret | None,
                      log: logging.Logger, resolver: Resolver = dns_lookup) -> dict:
    """--join: what the leader published for its workers (model, revision, node count, plan
    options, vLLM arguments without secrets), within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    port = master_port + 1
    _, store = reach_leader(address, timeout_s=timeout_s, log=log, resolver=resolver,
                            target=f"the leader's group store (port {port})",
                            connect=lambda ip, t: GroupStore.join(ip, port, timeout_s=t, secret=secret, log=log))
    assert store is not None
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
                                         why="a worker started with --join learns the model and settings from the leader"
                                         + (" (a value there without the group secret's tag was ignored: do both nodes "
                                            "have the same secret?)" if store.forged else ""),
                                         fix="check the leader's log; or raise --rendezvous-timeout")
        time.sleep(_POLL_S)


__all__ = ["BEAT_INTERVAL_S", "DEFAULT_PEER_TIMEOUT_S", "Group", "GroupSettings", "NodeFacts", "learn_from_leader",
           "public_vllm_args"]
