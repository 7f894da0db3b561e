"""A node's group (multi-node launches): one owner, ``Group``, from opening or joining the
leader's store to leaving it; the API calls it and hands the supervisor its hooks.

  addresses  the leader's IP (the one DNS loop) and this node's address on the way to it
  store      the leader's TCPStore: signed, round-scoped messages, every call with a deadline
  secret     the group secret (HMAC tags) and the API key's keyed digest
  member     the owner: open / meet / watch (the supervisor's hooks) / leave
  health     the group's state enum and what a worker's /health says
  launching  the group as one launch uses it, in the API's order (secret, owner, publish/join,
             check-in facts, the end of a round)
"""

from kaito_runtime.launch.group.addresses import DEFAULT_TIMEOUT_S, RendezvousInfo, with_master_ip
from kaito_runtime.launch.group.health import GroupState, HealthReport
from kaito_runtime.launch.group.member import (
    DEFAULT_PEER_TIMEOUT_S,
    Group,
    GroupSettings,
    NodeFacts,
    learn_from_leader,
    public_vllm_args,
)
from kaito_runtime.launch.group.launching import (
    Published,
    before_the_group,
    end_the_round,
    for_launch,
    group_secret,
    join_the_leader,
    node_facts,
    open_for_workers,
)
from kaito_runtime.launch.group.secret import GroupSecret, api_key_digest, load_group_secret
from kaito_runtime.launch.group.store import StopKind, StopNotice, plan_fields, preload_torch

__all__ = [
    "DEFAULT_PEER_TIMEOUT_S", "DEFAULT_TIMEOUT_S", "Group", "GroupSecret", "GroupSettings", "GroupState",
    "HealthReport", "NodeFacts", "RendezvousInfo", "StopKind", "StopNotice", "api_key_digest", "learn_from_leader",
    "load_group_secret", "plan_fields", "preload_torch", "public_vllm_args", "with_master_ip",
    "Published", "before_the_group", "end_the_round", "for_launch", "group_secret", "join_the_leader", "node_facts",
    "open_for_workers",
]
