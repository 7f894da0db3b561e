"""Readable multi-node dry runs: role, rank, leader and the exact vLLM command on each node, for
the torchrun, LeaderWorkerSet and KAITO StatefulSet environment forms."""

import pytest
from click.testing import CliRunner

from kaito_runtime.cli import main

FORMS = {
    "torchrun": lambda rank: ({"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "10.1.2.3"}, "10.1.2.3"),
    "lws": lambda rank: ({"LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": str(rank),
                          "LWS_LEADER_ADDRESS": "grp-0.grp.default"}, "grp-0.grp.default"),
    "kaito-statefulset": lambda rank: ({"POD_INDEX": str(rank), "HOSTNAME": f"ws-{rank}", "KAITO_NNODES": "2"},
                                       "ws-0.ws-headless"),
}
MODELS = {
    "llama-3.3-70b-instruct": ["--sku", "Standard_NC48ads_A100_v4"],
    "deepseek-r1-0528": ["--sku", "Standard_ND96isr_H100_v5"],
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("preset", sorted(MODELS))
@pytest.mark.parametrize("rank", [0, 1])
def test_each_node_of_a_group_prints_its_role_rank_leader_and_command(form, preset, rank):
    env, leader = FORMS[form](rank)
    env = {**env, "HF_TOKEN": None, "KAITO_NNODES": env.get("KAITO_NNODES")}
    result = CliRunner().invoke(main, ["--preset", preset, "--dry-run", *MODELS[preset]], env=env)
    assert result.exit_code == 0, result.output
    out = result.stdout
    role = "leader" if rank == 0 else "worker"
    assert f"Group     {role}, node {rank} of 2, leader {leader}:29501, group store port 29502; from {form}" in out
    command = out.split("Command\n", 1)[1]
    assert f"--nnodes 2 --node-rank {rank} --master-addr {leader} --master-port 29501" in command
    assert "--distributed-executor-backend mp" in command and "ray" not in command
    assert ("--headless" in command) == (rank == 1)
    assert ("headless worker (the leader serves); its launcher answers GET /health" in out) == (rank == 1)


def test_a_cpu_group_on_one_machine_binds_each_node_to_its_own_cores():
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1", "HF_TOKEN": None}
    result = CliRunner().invoke(main, ["--model", "models/tiny-llama", "--cpu", "--cpu-cores", "1", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    command = result.stdout.split("Command\n", 1)[1]
    assert "VLLM_CPU_OMP_THREADS_BIND=1 " in command and "--tensor-parallel-size 2" in command
    assert "--enforce-eager" in command and "--headless" in command and "--node-rank 1" in command
