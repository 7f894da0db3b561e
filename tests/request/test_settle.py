"""kaito_runtime.request.settle: a --join worker's launch once its leader has said what the group
serves (settled once: the leader's vLLM arguments parsed here, the rest of this node's own)."""

from __future__ import annotations

from types import SimpleNamespace

from kaito_runtime.request import RuntimeRequest
from kaito_runtime.request.settle import settle_request
from kaito_runtime.types import PlanOverrides


def test_a_joined_launch_takes_the_leaders_model_and_args_and_keeps_this_nodes_rank_cores_and_folders(tmp_path):
    own = settle_request(RuntimeRequest(join=True, node_rank=1, port=5001, weights_dir=tmp_path,
                                        overrides=PlanOverrides(cpu_cores="4-7")), {"HF_TOKEN": "hf_workerOwnToken01"})
    leader = SimpleNamespace(preset=None, model="models/tiny", revision="abc", served_model_name="tiny", nnodes=2,
                             leader_address="10.0.0.1", master_port=29500,
                             vllm_args=("--max-num-seqs", "4", "--trust-remote-code"),
                             overrides=PlanOverrides(max_model_len=256))
    launch = own.joined(leader)
    m = launch.model
    assert (m.model, m.revision, m.served_model_name, m.remote_code) == ("models/tiny", "abc", "tiny", True)
    assert (launch.group.nnodes, launch.group.leader_address, launch.group.master_port) == (2, "10.0.0.1", 29500)
    assert (launch.group.node_rank, launch.group.join) == (1, True)
    assert launch.overrides == PlanOverrides(cpu_cores="4-7", max_model_len=256, max_num_seqs=4)
    assert launch.user_args.last_value("max-num-seqs") == "4"
    assert (launch.serve.port, launch.weights.weights_dir) == (5001, tmp_path)
    assert launch.credentials is own.credentials  # the token is not resolved again


def test_a_join_worker_given_a_model_of_its_own_is_refused_at_settle_time(tmp_path):
    import pytest

    from kaito_runtime.errors import InputError

    with pytest.raises(InputError, match="--join learns the model and its settings from the leader"):
        settle_request(RuntimeRequest(join=True, node_rank=1, model="org/tiny", weights_dir=tmp_path), {})
    assert settle_request(RuntimeRequest(join=True, node_rank=1, weights_dir=tmp_path), {}).group.join


def test_vllms_api_address_is_the_pass_through_host_and_port_else_the_options(tmp_path):
    options_only = settle_request(RuntimeRequest(model="org/tiny", host="127.0.0.1", port=5001, weights_dir=tmp_path), {})
    assert options_only.api_address == ("127.0.0.1", 5001)
    passed = settle_request(RuntimeRequest(model="org/tiny", host="127.0.0.1", port=5001, weights_dir=tmp_path,
                                           extra_vllm_args=("--host", "0.0.0.0", "--port=6001")), {})
    assert passed.api_address == ("0.0.0.0", 6001)
