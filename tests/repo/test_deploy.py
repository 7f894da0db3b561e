"""deploy/*.yaml: the core kinds validate against Kubernetes' own schemas (kubernetes-validate,
strict: an unknown field fails), the LeaderWorkerSet uses the fields LWS defines, and every pod
template keeps the promises of docs/container.md: a startup probe long enough for a large
download, readiness on /health, liveness on /health (a worker's launcher answers it), a
termination grace period longer than the launcher's, the token from a Secret mounted as a file,
/dev/shm in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.ci import need_module
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30.0"  # the oldest version these manifests are meant for (pod-index label: 1.28+)
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
LAUNCHER_DEFAULT_GRACE = 30.0  # kaito-run --grace-period default


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(role, pod template) of a workload document."""
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet"):
        return [(kind, doc["spec"]["template"])]
    if kind == "LeaderWorkerSet":
        lwt = doc["spec"]["leaderWorkerTemplate"]
        return [("leader", lwt["leaderTemplate"]), ("worker", lwt["workerTemplate"])]
    return []


ALL_TEMPLATES = [
    pytest.param(path, role, template, id=f"{path.stem}-{role}")
    for path in MANIFESTS
    for doc in documents(path)
    for role, template in pod_templates(doc)
]


def test_the_three_forms_are_there():
    kinds = {path.name: {d["kind"] for d in documents(path)} for path in MANIFESTS}
    assert kinds["single-node.yaml"] == {"Deployment", "Service"}
    assert kinds["statefulset-two-nodes.yaml"] == {"StatefulSet", "Service"}
    assert kinds["leaderworkerset-two-nodes.yaml"] == {"LeaderWorkerSet", "Service"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_core_kinds_validate_against_the_kubernetes_schema(path):
    kv = need_module("kubernetes_validate", "kubernetes-validate is not installed (it is in the test extra)")
    for doc in documents(path):
        if doc["apiVersion"].startswith("leaderworkerset."):
            for role, template in pod_templates(doc):  # a CRD: its pod templates are core PodSpecs
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"t-{role}", **template.get("metadata", {})},
                       "spec": template["spec"]}
                kv.validate(pod, K8S_VERSION, strict=True)
            continue
        kv.validate(doc, K8S_VERSION, strict=True)


def test_the_validation_catches_a_misspelt_field():
    kv = need_module("kubernetes_validate", "kubernetes-validate is not installed (it is in the test extra)")
    doc = documents(DEPLOY / "single-node.yaml")[0]
    doc["spec"]["template"]["spec"]["terminationGracePeriod"] = 90
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSION, strict=True)


def test_the_leaderworkerset_uses_the_fields_lws_defines():
    (lws,) = [d for d in documents(DEPLOY / "leaderworkerset-two-nodes.yaml") if d["kind"] == "LeaderWorkerSet"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    spec = lws["spec"]
    assert set(spec) <= {"replicas", "leaderWorkerTemplate", "rolloutStrategy", "startupPolicy", "networkConfig"}
    assert spec["startupPolicy"] in ("LeaderCreated", "LeaderReady")
    lwt = spec["leaderWorkerTemplate"]
    assert set(lwt) <= {"leaderTemplate", "workerTemplate", "size", "restartPolicy", "subGroupPolicy"}
    assert lwt["size"] == 2  # two nodes: leader + one worker
    assert lwt["restartPolicy"] == "RecreateGroupOnPodRestart"  # a lost node restarts the group
    for role, template in pod_templates(lws):
        env = {e["name"] for c in template["spec"]["containers"] for e in c.get("env", [])}
        # LWS injects these; kaito-run reads them as node count, rank and leader.
        assert not env & {"LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX", "KAITO_NNODES"}, role
    (service,) = [d for d in documents(DEPLOY / "leaderworkerset-two-nodes.yaml") if d["kind"] == "Service"]
    assert service["spec"]["selector"]["leaderworkerset.sigs.k8s.io/name"] == lws["metadata"]["name"]


def test_the_statefulset_is_kaitos_shape():
    docs = documents(DEPLOY / "statefulset-two-nodes.yaml")
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    headless = next(d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"] == f"{sts['metadata']['name']}-headless"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert int(env["KAITO_NNODES"]["value"]) == sts["spec"]["replicas"] == 2
    readiness = container["readinessProbe"]["exec"]["command"]
    assert f"--leader-address={sts['metadata']['name']}-0.{headless['metadata']['name']}" in readiness


def _container(template: dict) -> dict:
    (container,) = template["spec"]["containers"]
    return container


def _volume(template: dict, name: str) -> dict:
    return next(v for v in template["spec"]["volumes"] if v["name"] == name)


def _mount(container: dict, path: str) -> str:
    return next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == path)


@pytest.mark.parametrize(("path", "role", "template"), ALL_TEMPLATES)
def test_probes_for_a_long_start_and_health_on_every_pod(path, role, template):
    container = _container(template)
    startup = container["startupProbe"]  # the launcher's /startupz: answers through vLLM's whole start
    assert startup["httpGet"] == {"path": "/startupz", "port": "metrics"}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert any(p["name"] == "metrics" and p["containerPort"] == int(env["KAITO_METRICS_PORT"]) for p in container["ports"])
    assert container["terminationMessagePolicy"] == "File"  # kaito-run writes why it ended there
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60  # KAITO's smallest ReadinessTimeout
    readiness = container["readinessProbe"]
    assert readiness.get("httpGet", {}).get("path") == "/health" or "readiness" in readiness["exec"]["command"]
    liveness = container["livenessProbe"]  # on workers: the launcher's /health
    assert liveness["httpGet"]["path"] == "/health" and liveness["httpGet"]["port"] == "http"
    assert any(p["name"] == "http" and p["containerPort"] == 5000 for p in container["ports"])


@pytest.mark.parametrize(("path", "role", "template"), ALL_TEMPLATES)
def test_grace_token_file_shm_and_non_root(path, role, template):
    spec = template["spec"]
    container = _container(template)
    env = {e["name"]: e for e in container.get("env", [])}
    grace = float(env["KAITO_GRACE_PERIOD"]["value"]) if "KAITO_GRACE_PERIOD" in env else LAUNCHER_DEFAULT_GRACE
    assert spec["terminationGracePeriodSeconds"] > grace + 10  # room for the launcher to exit after vLLM
    # The token: a Secret mounted as a file, named by KAITO_HF_TOKEN_FILE; never an env value.
    token_file = env["KAITO_HF_TOKEN_FILE"]["value"]
    volume = _volume(template, _mount(container, str(Path(token_file).parent)))
    assert "secret" in volume and volume["secret"]["secretName"]
    assert not {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"} & set(env)
    assert not any("token" in a.lower() for a in container.get("args", []))
    shm = _volume(template, _mount(container, "/dev/shm"))
    assert shm["emptyDir"]["medium"] == "Memory"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    assert _mount(container, "/workspace/weights") and _mount(container, "/workspace/cache")


def test_the_network_policy_opens_the_group_ports_only_to_the_group_and_http_to_all():
    """issue 18: the store (master port + 1) and vLLM's master port reachable from the pods of
    the same group only; each policy selects exactly the pods of its two-node manifest."""
    policies = documents(DEPLOY / "networkpolicy-two-nodes.yaml")
    assert {p["kind"] for p in policies} == {"NetworkPolicy"}
    labels = {}
    for name in ("statefulset-two-nodes.yaml", "leaderworkerset-two-nodes.yaml"):
        for doc in documents(DEPLOY / name):
            for role, template in pod_templates(doc):
                pod_labels = dict(template.get("metadata", {}).get("labels", {}))
                if doc["kind"] == "LeaderWorkerSet":  # LWS labels its pods with the set's name
                    pod_labels["leaderworkerset.sigs.k8s.io/name"] = doc["metadata"]["name"]
                labels[(name, role)] = pod_labels
                env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0].get("env", [])}
                assert env.get("KAITO_GROUP_SECRET_FILE"), (name, role)
    for (name, role), pod_labels in labels.items():
        selecting = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()]
        assert len(selecting) == 1, (name, role)
        policy = selecting[0]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"]["ingress"]:
            if "from" in rule:  # the group's own pods: every port (gloo/NCCL pick theirs at run time)
                assert rule["from"] == [{"podSelector": policy["spec"]["podSelector"]}] and "ports" not in rule
            else:  # everyone else: the HTTP port only
                assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]


def test_no_instruction_puts_a_secret_on_a_command_line():
    # `kubectl create secret ... --from-literal=secret=$(openssl rand ...)` puts the secret in
    # kubectl's argv (ps, shell history): every instruction makes the Secret from a file.
    texts = {p: p.read_text() for p in [*DEPLOY.glob("*.yaml"), *(REPO / "docs").glob("*.md"), REPO / "README.md"]}
    literal = [str(p.relative_to(REPO)) for p, text in texts.items() if "--from-literal" in text]
    assert literal == []
    assert any("--from-file=secret=" in text for text in texts.values())
