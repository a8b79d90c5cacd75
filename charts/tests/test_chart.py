"""The loom-sidecar Helm chart, rendered by a real helm and checked with the real sidecar binary.

Every mode is rendered with `helm template` and the manifests are parsed; the sidecar config in
the ConfigMap is run through `loom-sidecar validate` (which denies unknown fields), so what the
chart renders is what the binary accepts.
"""

import hashlib
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

# Not imported from conftest.py: scripts/test.sh runs several test folders, each with its own
# conftest module, in one pytest process.
CHART_DIR = Path(__file__).resolve().parents[1] / "loom-sidecar"

pytestmark = pytest.mark.timeout(120)

RELEASE = "loom"
NAMESPACE = "observability"
FULLNAME = "loom-loom-sidecar"
JAEGER = "http://jaeger-collector.observability:4317"
PORTS = {"otlp-grpc": 4317, "otlp-http": 4318, "health": 13133, "metrics": 8888}


# ---------------------------------------------------------------------------------- helpers


def _template(helm, tmp_path: Path, values: Optional[dict], *extra: str, chart=CHART_DIR):
    args = ["template", RELEASE, chart, "--namespace", NAMESPACE]
    if values is not None:
        f = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
        f.write_text(yaml.safe_dump(values))
        args += ["-f", f]
    return helm(*args, *extra)


@pytest.fixture
def render(helm, tmp_path):
    """render(values) -> list of manifests; fails the test when helm fails."""

    def go(values: Optional[dict] = None, *extra: str, chart=CHART_DIR) -> List[dict]:
        r = _template(helm, tmp_path, values, *extra, chart=chart)
        assert r.returncode == 0, f"helm template failed:\n{r.stderr}"
        return [d for d in yaml.safe_load_all(r.stdout) if d]

    return go


@pytest.fixture
def render_error(helm, tmp_path):
    """render_error(values) -> helm's stderr; fails the test when helm succeeds."""

    def go(values: dict) -> str:
        r = _template(helm, tmp_path, values)
        assert r.returncode != 0, f"helm template accepted {values!r}:\n{r.stdout[:2000]}"
        return r.stderr

    return go


def kinds(docs: List[dict]) -> List[str]:
    return sorted(d["kind"] for d in docs)


def one(docs: List[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"want one {kind}, got {kinds(docs)}"
    return found[0]


def workload(docs: List[dict]) -> dict:
    found = [d for d in docs if d["kind"] in ("DaemonSet", "Deployment")]
    assert len(found) == 1, kinds(docs)
    return found[0]


def sidecar_container(pod_spec: dict) -> dict:
    found = [c for c in pod_spec["containers"] if c["name"] == "loom-sidecar"]
    assert len(found) == 1, [c["name"] for c in pod_spec["containers"]]
    return found[0]


def config_text(docs: List[dict]) -> str:
    return one(docs, "ConfigMap")["data"]["config.yaml"]


def config_of(docs: List[dict]) -> dict:
    return yaml.safe_load(config_text(docs))


def env_map(container: dict) -> Dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def validate(sidecar_bin: Path, tmp_path: Path, text: str, container: Optional[dict] = None):
    """Runs `loom-sidecar validate` on a rendered config, with the env the pod would have."""
    env = {"PATH": "/usr/bin:/bin", "K8S_NODE_NAME": "node-1", "K8S_POD_NAME": "pod-1",
           "K8S_NAMESPACE_NAME": NAMESPACE, "HOST_IP": "10.0.0.1", "POD_IP": "10.1.0.1"}
    for e in (container or {}).get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = "secret-from-" + e["valueFrom"]["secretKeyRef"]["name"]
    f = tmp_path / "config.yaml"
    f.write_text(text)
    return subprocess.run([str(sidecar_bin), "validate", "--config", str(f)], env=env,
                          capture_output=True, text=True, timeout=30)


def assert_valid(sidecar_bin, tmp_path, docs):
    pod = workload(docs)["spec"]["template"]["spec"] if any(
        d["kind"] in ("DaemonSet", "Deployment") for d in docs) else None
    container = sidecar_container(pod) if pod else None
    r = validate(sidecar_bin, tmp_path, config_text(docs), container)
    assert r.returncode == 0, f"loom-sidecar validate rejected the rendered config:\n" \
                              f"{r.stdout}{r.stderr}\n---\n{config_text(docs)}"


# ------------------------------------------------------------------------------------ lint


@pytest.mark.parametrize("mode", ["daemonset", "deployment", "sidecar"])
def test_helm_lint_strict(helm, mode):
    r = helm("lint", "--strict", CHART_DIR, "--set", f"mode={mode}",
             "--set", f"exporters.jaeger.endpoint={JAEGER}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 chart(s) failed" in r.stdout


# ----------------------------------------------------------------------------------- modes


def test_daemonset_is_the_default_mode(render):
    docs = render()
    assert kinds(docs) == ["ConfigMap", "DaemonSet", "Service", "ServiceAccount"]
    ds = one(docs, "DaemonSet")
    assert ds["metadata"]["name"] == FULLNAME
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    svc = one(docs, "Service")
    # Agents reach the sidecar of their own node through the Service.
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "otlp-grpc": 4317, "otlp-http": 4318, "metrics": 8888}
    c = sidecar_container(ds["spec"]["template"]["spec"])
    # ... or through the node IP (status.hostIP) on hostPorts.
    host_ports = {p["name"]: p.get("hostPort") for p in c["ports"]}
    assert host_ports == {"otlp-grpc": 4317, "otlp-http": 4318, "health": None, "metrics": None}


def test_daemonset_without_host_ports(render):
    ds = one(render({"hostPort": {"enabled": False}}), "DaemonSet")
    c = sidecar_container(ds["spec"]["template"]["spec"])
    assert all("hostPort" not in p for p in c["ports"])


def test_deployment_mode_is_a_gateway_with_pdb(render):
    docs = render({"mode": "deployment", "replicas": 3})
    assert kinds(docs) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
                           "ServiceAccount"]
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 3
    assert dep["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert one(docs, "Service")["spec"]["internalTrafficPolicy"] == "Cluster"
    c = sidecar_container(dep["spec"]["template"]["spec"])
    assert all("hostPort" not in p for p in c["ports"])


def test_deployment_mode_with_hpa(render):
    docs = render({"mode": "deployment", "replicas": 3,
                   "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6,
                                   "targetMemoryUtilizationPercentage": 75}})
    assert "HorizontalPodAutoscaler" in kinds(docs)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
               for m in hpa["spec"]["metrics"]}
    assert targets == {"cpu": 70, "memory": 75}
    # The HPA owns the replica count.
    assert "replicas" not in one(docs, "Deployment")["spec"]


def test_deployment_without_pdb(render):
    docs = render({"mode": "deployment", "podDisruptionBudget": {"enabled": False}})
    assert "PodDisruptionBudget" not in kinds(docs)


def test_sidecar_mode_renders_only_the_configmap(render, sidecar_bin, tmp_path):
    docs = render({"mode": "sidecar", "exporters": {"jaeger": {"endpoint": JAEGER}}})
    assert kinds(docs) == ["ConfigMap"]
    assert one(docs, "ConfigMap")["metadata"]["name"] == FULLNAME
    assert_valid(sidecar_bin, tmp_path, docs)


@pytest.mark.parametrize("mode", ["daemonset", "deployment"])
def test_hpa_and_pdb_only_in_deployment_mode(render, mode):
    docs = render({"mode": mode, "autoscaling": {"enabled": True}})
    assert ("HorizontalPodAutoscaler" in kinds(docs)) == (mode == "deployment")
    assert ("PodDisruptionBudget" in kinds(docs)) == (mode == "deployment")


# ------------------------------------------------------------------------------- pod spec


@pytest.mark.parametrize("mode", ["daemonset", "deployment"])
def test_container_ports_probes_and_command(render, mode):
    pod = workload(render({"mode": mode}))["spec"]["template"]["spec"]
    c = sidecar_container(pod)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == PORTS
    assert all(p["protocol"] == "TCP" for p in c["ports"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": 13133}, probe
    assert c["command"] + c["args"] == ["loom-sidecar", "--config",
                                        "/etc/loom-sidecar/config.yaml"]
    assert c["image"] == "loom/loom-sidecar:0.1.0"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["loom-sidecar-config"]["mountPath"] == "/etc/loom-sidecar"
    assert mounts["loom-sidecar-config"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["loom-sidecar-config"]["configMap"]["name"] == FULLNAME
    assert c["resources"]["limits"]["memory"] == "512Mi"
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}


@pytest.mark.parametrize("mode", ["daemonset", "deployment"])
def test_downward_api_and_sampler_env(render, mode):
    values = {"mode": mode, "sampler": {"name": "parentbased_traceidratio", "arg": 0.25}}
    c = sidecar_container(workload(render(values))["spec"]["template"]["spec"])
    env = env_map(c)
    field_refs = {name: e["valueFrom"]["fieldRef"]["fieldPath"]
                  for name, e in env.items() if "fieldRef" in e.get("valueFrom", {})}
    assert field_refs["K8S_NODE_NAME"] == "spec.nodeName"
    assert field_refs["K8S_POD_NAME"] == "metadata.name"
    assert field_refs["K8S_NAMESPACE_NAME"] == "metadata.namespace"
    assert field_refs["HOST_IP"] == "status.hostIP"
    assert env["OTEL_TRACE_SAMPLER"]["value"] == "parentbased_traceidratio"
    assert env["OTEL_TRACE_SAMPLER_ARG"]["value"] == "0.25"


@pytest.mark.parametrize("mode", ["daemonset", "deployment"])
def test_security_context(render, mode):
    pod = workload(render({"mode": mode}))["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = sidecar_container(pod)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == FULLNAME


def test_prometheus_annotations_and_service_monitor(render):
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}})
    ann = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "8888"
    assert ann["prometheus.io/path"] == "/metrics"
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]
    assert "ServiceMonitor" not in kinds(render())
    off = render({"metrics": {"podAnnotations": False}})
    assert "prometheus.io/scrape" not in one(off, "DaemonSet")["spec"]["template"]["metadata"][
        "annotations"]


# ------------------------------------------------------------------------------ config


def test_default_config(render, sidecar_bin, tmp_path):
    docs = render()
    cfg = config_of(docs)
    assert cfg["receivers"]["otlp"]["protocols"] == {"grpc": {"endpoint": "0.0.0.0:4317"},
                                                     "http": {"endpoint": "0.0.0.0:4318"}}
    assert cfg["extensions"]["health_check"] == {"endpoint": "0.0.0.0:13133", "path": "/health"}
    assert cfg["service"]["telemetry"]["metrics"]["address"] == "0.0.0.0:8888"
    assert cfg["service"]["extensions"] == ["health_check"]
    traces = cfg["service"]["pipelines"]["traces"]
    assert traces["processors"] == ["memory_limiter", "sampler", "enrich", "batch"]
    assert cfg["processors"]["sampler"]["default"] == {
        "sampler": "${env:OTEL_TRACE_SAMPLER:-parentbased_always_on}",
        "arg": "${env:OTEL_TRACE_SAMPLER_ARG:-1.0}"}
    # 80 % of the 512Mi limit, spike 20 % of that.
    assert cfg["processors"]["memory_limiter"]["limit_mib"] == 409
    assert cfg["processors"]["memory_limiter"]["spike_limit_mib"] == 81
    # No exporter configured: spans go to the log rather than nowhere.
    assert traces["exporters"] == ["debug"]
    assert_valid(sidecar_bin, tmp_path, docs)


def test_jaeger_exporter(render, sidecar_bin, tmp_path):
    docs = render({"exporters": {"jaeger": {"endpoint": JAEGER}}})
    cfg = config_of(docs)
    assert cfg["exporters"]["otlp/jaeger"]["endpoint"] == JAEGER
    assert cfg["exporters"]["otlp/jaeger"]["compression"] == "gzip"
    assert cfg["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    assert "debug" not in cfg["exporters"]
    assert_valid(sidecar_bin, tmp_path, docs)


def test_switch_to_otlphttp_with_header_secrets(render, sidecar_bin, tmp_path):
    docs = render({"exporters": {"otlphttp": {
        "endpoint": "https://otlp.example.com",
        "headers": {"x-tenant": "acme"},
        "headersFromSecret": {
            "x-api-key": {"secretName": "backend-credentials", "key": "api-key"},
            "authorization": {"secretName": "backend-credentials", "key": "token",
                              "prefix": "Bearer "}}}}})
    cfg = config_of(docs)
    exp = cfg["exporters"]["otlphttp"]
    assert exp["endpoint"] == "https://otlp.example.com"
    assert exp["headers"] == {
        "x-tenant": "acme",
        "x-api-key": "${env:LOOM_OTLPHTTP_HEADER_X_API_KEY}",
        "authorization": "Bearer ${env:LOOM_OTLPHTTP_HEADER_AUTHORIZATION}"}
    assert cfg["service"]["pipelines"]["traces"]["exporters"] == ["otlphttp"]
    env = env_map(sidecar_container(workload(docs)["spec"]["template"]["spec"]))
    assert env["LOOM_OTLPHTTP_HEADER_X_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "backend-credentials", "key": "api-key"}
    assert env["LOOM_OTLPHTTP_HEADER_AUTHORIZATION"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert_valid(sidecar_bin, tmp_path, docs)


def test_jaeger_otlphttp_debug_and_file_together(render, sidecar_bin, tmp_path):
    docs = render({"mode": "deployment",
                   "exporters": {"jaeger": {"endpoint": JAEGER},
                                 "otlphttp": {"endpoint": "http://tempo.observability:4318"},
                                 "debug": {"enabled": True, "verbosity": "detailed"},
                                 "file": {"enabled": True}},
                   "persistence": {"enabled": True, "type": "emptyDir"}})
    cfg = config_of(docs)
    assert cfg["service"]["pipelines"]["traces"]["exporters"] == [
        "otlp/jaeger", "otlphttp", "file", "debug"]
    assert cfg["exporters"]["file"]["path"] == "/var/lib/loom-sidecar/spans.jsonl"
    assert cfg["exporters"]["debug"]["verbosity"] == "detailed"
    assert_valid(sidecar_bin, tmp_path, docs)


def test_config_override_is_deep_merged(render, sidecar_bin, tmp_path):
    docs = render({
        "exporters": {"jaeger": {"endpoint": JAEGER}},
        "config": {
            "processors": {
                "batch": {"send_batch_size": 1024},
                "sampler": {"rules": [{"name": "sensors", "match": {"agent": "sensor-*"},
                                       "sampler": "traceidratio", "arg": 0.1}]}},
            "receivers": {"otlp": {"protocols": {"http": {"max_request_body_size": 67108864}}}},
            "exporters": {"otlp/tempo": {"endpoint": "tempo.observability:4317",
                                         "tls": {"insecure": True}}},
        }})
    cfg = config_of(docs)
    # Overridden keys win, the rest of each map stays.
    assert cfg["processors"]["batch"] == {"send_batch_size": 1024, "timeout": "200ms"}
    assert cfg["processors"]["sampler"]["default"]["sampler"].startswith("${env:OTEL_TRACE_SAMPLER")
    assert cfg["processors"]["sampler"]["rules"][0]["name"] == "sensors"
    assert cfg["receivers"]["otlp"]["protocols"]["http"] == {
        "endpoint": "0.0.0.0:4318", "max_request_body_size": 67108864}
    # An exporter added under config.exporters joins the pipeline.
    assert cfg["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger", "otlp/tempo"]
    assert_valid(sidecar_bin, tmp_path, docs)


def test_config_null_removes_a_default(render, sidecar_bin, tmp_path):
    docs = render({"exporters": {"jaeger": {"endpoint": JAEGER}},
                   "config": {"receivers": {"otlp": {"protocols": {"grpc": None}}}}})
    cfg = config_of(docs)
    assert cfg["receivers"]["otlp"]["protocols"] == {"http": {"endpoint": "0.0.0.0:4318"}}
    assert_valid(sidecar_bin, tmp_path, docs)


def test_config_pipeline_list_replaces(render, sidecar_bin, tmp_path):
    docs = render({"exporters": {"jaeger": {"endpoint": JAEGER}, "debug": {"enabled": True}},
                   "config": {"service": {"pipelines": {"traces": {"exporters": ["debug"]}}}}})
    cfg = config_of(docs)
    assert cfg["service"]["pipelines"]["traces"]["exporters"] == ["debug"]
    assert cfg["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
    assert_valid(sidecar_bin, tmp_path, docs)


def test_the_sidecar_rejects_a_bad_config_override(render, sidecar_bin, tmp_path):
    """The validate step is real: an unknown field passes helm but not the binary."""
    docs = render({"config": {"processors": {"batch": {"send_batch_sise": 10}}}})
    r = validate(sidecar_bin, tmp_path, config_text(docs))
    assert r.returncode == 1
    assert "processors.batch.send_batch_sise" in r.stdout + r.stderr


@pytest.mark.parametrize("memory,limit,spike", [
    ("512Mi", 409, 81), ("1Gi", 819, 163), ("2G", 1525, 305), ("256Mi", 204, 40)])
def test_memory_limiter_follows_the_memory_limit(render, sidecar_bin, tmp_path, memory, limit,
                                                 spike):
    docs = render({"resources": {"limits": {"memory": memory}}})
    ml = config_of(docs)["processors"]["memory_limiter"]
    assert (ml["limit_mib"], ml["spike_limit_mib"]) == (limit, spike)
    assert_valid(sidecar_bin, tmp_path, docs)


def test_memory_limiter_explicit(render):
    ml = config_of(render({"memoryLimiter": {"limitMib": 300, "spikeLimitMib": 50}}))[
        "processors"]["memory_limiter"]
    assert (ml["limit_mib"], ml["spike_limit_mib"]) == (300, 50)


def test_checksum_annotation_follows_the_config(render):
    def checksum(docs):
        return workload(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = render()
    # The annotation is the sha256 of exactly what the ConfigMap holds.
    text = config_text(base)
    assert checksum(base) == hashlib.sha256(text[:-1].encode()).hexdigest()
    assert checksum(render()) == checksum(base)
    assert checksum(render({"podAnnotations": {"team": "obs"}})) == checksum(base)
    changed = render({"config": {"processors": {"batch": {"send_batch_size": 1024}}}})
    assert checksum(changed) != checksum(base)
    assert checksum(render({"exporters": {"jaeger": {"endpoint": JAEGER}}})) != checksum(base)



def test_with_the_reload_watch_only_what_a_reload_cannot_change_rolls_the_pods(render):
    def checksum(values):
        docs = render({"config": {"service": {"reload": {"watch": True}}, **values}})
        return workload(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum({})
    # The sidecar reloads these in place (docs/reload.md): the ConfigMap changes, the pods stay.
    assert checksum({"processors": {"batch": {"send_batch_size": 1024}}}) == base
    assert checksum({"exporters": {"debug": {}}}) == base
    # These need a restart.
    assert checksum({"service": {"reload": {"watch": True},
                                 "telemetry": {"logs": {"level": "debug"}}}}) != base
    assert checksum({"extensions": {"health_check": {"path": "/ready"}}}) != base

@pytest.mark.parametrize("kind,mode", [("emptyDir", "daemonset"), ("hostPath", "daemonset"),
                                       ("pvc", "deployment")])
def test_persistence_volume(render, kind, mode):
    docs = render({"mode": mode, "persistence": {"enabled": True, "type": kind,
                                                 "mountPath": "/data/loom"}})
    pod = workload(docs)["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in sidecar_container(pod)["volumeMounts"]}
    assert mounts["loom-sidecar-data"] == "/data/loom"
    vol = {v["name"]: v for v in pod["volumes"]}["loom-sidecar-data"]
    if kind == "emptyDir":
        assert vol["emptyDir"] == {"sizeLimit": "1Gi"}
    elif kind == "hostPath":
        assert vol["hostPath"] == {"path": "/var/lib/loom-sidecar", "type": "DirectoryOrCreate"}
    else:
        assert vol["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-data"
        pvc = one(docs, "PersistentVolumeClaim")
        assert pvc["metadata"]["name"] == f"{FULLNAME}-data"
        assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"


def test_notes_tell_agents_where_to_send(helm):
    r = helm("install", RELEASE, CHART_DIR, "--dry-run=client", "--namespace", NAMESPACE)
    assert r.returncode == 0, r.stderr
    notes = r.stdout.split("NOTES:", 1)[1]
    assert "http://$(HOST_IP):4317" in notes
    assert "status.hostIP" in notes
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:4317" in notes
    assert "no exporter is configured" in notes
    r = helm("install", RELEASE, CHART_DIR, "--dry-run=client", "--set", "mode=sidecar",
             "--set", f"exporters.jaeger.endpoint={JAEGER}")
    assert r.returncode == 0, r.stderr
    notes = r.stdout.split("NOTES:", 1)[1]
    assert 'include "loom-sidecar.container"' in notes
    assert "http://localhost:4317" in notes
    assert "no exporter is configured" not in notes


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("values,field,hint", [
    ({"mode": "bogus"}, "mode", "daemonset"),
    ({"replicas": -1}, "replicas", "0"),
    ({"replicas": "three"}, "replicas", "integer"),
    ({"sampler": {"name": "sometimes"}}, "sampler[./]name", "parentbased_always_on"),
    ({"sampler": {"arg": 2}}, "sampler[./]arg", ""),
    ({"exporters": {"jaeger": {"endpoint": "ftp://jaeger:4317"}}},
     "exporters[./]jaeger[./]endpoint", ""),
    ({"exporters": {"otlphttp": {"encoding": "xml"}}}, "exporters[./]otlphttp[./]encoding", "json"),
    ({"ports": {"otlpGrpc": 70000}}, "ports[./]otlpGrpc", "65535|65,535"),
    ({"persistence": {"type": "nfs"}}, "persistence[./]type", "hostPath"),
    ({"autoscaling": {"enabled": "yes"}}, "autoscaling[./]enabled", "boolean"),
    ({"replcas": 2}, "replcas", ""),
    ({"config": {"recievers": {}}}, "recievers", ""),
])
def test_schema_rejects_bad_values(render_error, values, field, hint):
    err = render_error(values)
    assert re.search(field, err), f"the error does not name {field}:\n{err}"
    if hint:
        assert re.search(hint, err), err


@pytest.mark.parametrize("values,message", [
    ({"mode": "deployment", "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
     "autoscaling.minReplicas"),
    ({"mode": "deployment", "podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
     "podDisruptionBudget"),
    ({"persistence": {"enabled": True, "type": "pvc"}}, "persistence.pvc.existingClaim"),
    ({"exporters": {"file": {"enabled": True}}}, "persistence.enabled"),
    ({"resources": {"limits": {"memory": None}}}, "memoryLimiter.limitMib"),
    ({"memoryLimiter": {"limitMib": 100, "spikeLimitMib": 100}}, "memoryLimiter.spikeLimitMib"),
    ({"config": {"exporters": {"debug": None}}}, "no exporter"),
])
def test_template_rejects_inconsistent_values(render_error, values, message):
    err = render_error(values)
    assert message in err, err


# ------------------------------------------------------------------ sidecar named template


def test_sidecar_container_template_in_an_agent_chart(helm, render, sidecar_bin, tmp_path):
    """A chart that depends on loom-sidecar (file://) includes the container into its pod."""
    agent = tmp_path / "agent"
    (agent / "templates").mkdir(parents=True)
    (agent / "Chart.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: v2
        name: agent
        version: 0.1.0
        dependencies:
          - name: loom-sidecar
            version: 0.1.0
            repository: file://{CHART_DIR}
        """))
    (agent / "values.yaml").write_text(textwrap.dedent(f"""\
        loom-sidecar:
          mode: sidecar
          exporters:
            jaeger:
              endpoint: {JAEGER}
        """))
    (agent / "templates" / "deployment.yaml").write_text(textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {{ .Release.Name }}-agent
        spec:
          selector:
            matchLabels: {app: agent}
          template:
            metadata:
              labels: {app: agent}
              annotations:
                checksum/config: agent-own-checksum
                {{- include "loom-sidecar.checksumAnnotation" (index .Subcharts "loom-sidecar") | nindent 8 }}
            spec:
              containers:
                - name: agent
                  image: example/agent:1
                  env:
                    - name: OTEL_EXPORTER_OTLP_ENDPOINT
                      value: http://localhost:4317
                - {{- include "loom-sidecar.container" (index .Subcharts "loom-sidecar") | nindent 10 }}
              volumes:
                {{- include "loom-sidecar.volumes" (index .Subcharts "loom-sidecar") | nindent 8 }}
        """))
    r = helm("dependency", "build", agent)
    assert r.returncode == 0, r.stdout + r.stderr
    docs = render(None, chart=agent)
    assert kinds(docs) == ["ConfigMap", "Deployment"]
    pod_template = one(docs, "Deployment")["spec"]["template"]
    pod = pod_template["spec"]
    assert [c["name"] for c in pod["containers"]] == ["agent", "loom-sidecar"]
    c = sidecar_container(pod)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == PORTS
    assert all("hostPort" not in p for p in c["ports"])
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 13133}
    assert env_map(c)["K8S_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    cm = one(docs, "ConfigMap")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["loom-sidecar-config"]["configMap"]["name"] == cm["metadata"]["name"]
    ann = pod_template["metadata"]["annotations"]
    assert ann["checksum/config"] == "agent-own-checksum"
    assert ann["checksum/loom-sidecar-config"] == hashlib.sha256(
        cm["data"]["config.yaml"][:-1].encode()).hexdigest()
    assert config_of(docs)["exporters"]["otlp/jaeger"]["endpoint"] == JAEGER
    r = validate(sidecar_bin, tmp_path, cm["data"]["config.yaml"], c)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- persistent sending queue

OTLPHTTP = "http://tempo.observability:4318"
NETWORK_EXPORTERS = ["otlp/jaeger", "otlphttp"]


def queue_values(mode: str, kind: str, **extra) -> dict:
    """Every kind of exporter the chart renders, plus one from config.exporters."""
    values = {
        "mode": mode,
        "exporters": {"jaeger": {"endpoint": JAEGER}, "otlphttp": {"endpoint": OTLPHTTP},
                      "debug": {"enabled": True}, "file": {"enabled": True}},
        "config": {"exporters": {"otlp/tempo": {"endpoint": "tempo.observability:4317",
                                                "tls": {"insecure": True}}}},
        "persistence": {"enabled": True, "type": kind, "queue": {"enabled": True}},
    }
    values.update(extra)
    return values


@pytest.mark.parametrize("mode,kind,extra", [
    ("daemonset", "hostPath", {}),
    ("daemonset", "emptyDir", {}),
    ("deployment", "emptyDir", {"replicas": 3}),
    ("deployment", "pvc", {"replicas": 1, "strategy": {"type": "Recreate"}}),
    ("sidecar", "emptyDir", {}),
])
def test_persistent_queue_on_the_network_exporters_only(render, sidecar_bin, tmp_path, mode,
                                                        kind, extra):
    docs = render(queue_values(mode, kind, **extra))
    exporters = config_of(docs)["exporters"]
    assert sorted(exporters) == ["debug", "file", "otlp/jaeger", "otlp/tempo", "otlphttp"]
    for exp in NETWORK_EXPORTERS:
        # One parent folder: the sidecar gives each exporter a sub-folder named after its id.
        assert exporters[exp]["sending_queue"] == {
            "storage": {"directory": "/var/lib/loom-sidecar/queue", "max_bytes": 268435456,
                        "fsync": "batch"},
            "when_full": "refuse"}, exp
    for exp in ("debug", "file", "otlp/tempo"):
        assert "sending_queue" not in exporters[exp], exp
    assert "queue_size" not in config_text(docs)
    if mode != "sidecar":
        pod = workload(docs)["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in sidecar_container(pod)["volumeMounts"]}
        assert mounts["loom-sidecar-data"] == "/var/lib/loom-sidecar"
    assert_valid(sidecar_bin, tmp_path, docs)


def test_persistent_queue_settings(render, sidecar_bin, tmp_path):
    docs = render({"exporters": {"otlphttp": {"endpoint": OTLPHTTP}},
                   "persistence": {"enabled": True, "type": "hostPath", "mountPath": "/data/loom/",
                                   "queue": {"enabled": True, "maxBytes": 65536,
                                             "fsync": "interval", "fsyncInterval": "250ms",
                                             "whenFull": "drop_oldest"}}})
    assert config_of(docs)["exporters"]["otlphttp"]["sending_queue"] == {
        "storage": {"directory": "/data/loom/queue", "max_bytes": 65536, "fsync": "interval",
                    "fsync_interval": "250ms"},
        "when_full": "drop_oldest"}
    assert_valid(sidecar_bin, tmp_path, docs)


@pytest.mark.parametrize("persistence", [
    {"enabled": True}, {"enabled": True, "queue": {"enabled": False}}])
def test_no_persistent_queue_unless_enabled(render, sidecar_bin, tmp_path, persistence):
    docs = render({"exporters": {"jaeger": {"endpoint": JAEGER}}, "persistence": persistence})
    assert "sending_queue" not in config_text(docs)
    assert_valid(sidecar_bin, tmp_path, docs)


def test_config_can_tune_the_persistent_queue(render, sidecar_bin, tmp_path):
    docs = render(queue_values("daemonset", "emptyDir", config={"exporters": {
        "otlp/jaeger": {"sending_queue": {"num_consumers": 4}}}}))
    sq = config_of(docs)["exporters"]["otlp/jaeger"]["sending_queue"]
    assert sq["num_consumers"] == 4
    assert sq["storage"]["directory"] == "/var/lib/loom-sidecar/queue"
    assert_valid(sidecar_bin, tmp_path, docs)


def test_the_sidecar_runs_each_exporter_queue_in_its_own_folder(render, sidecar_bin, tmp_path):
    """Starts the real sidecar on the rendered config, with the volume at a temp folder."""
    import socket
    import time

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    data = tmp_path / "data"
    data.mkdir()
    docs = render({
        "exporters": {"jaeger": {"endpoint": "http://127.0.0.1:1"},
                      "otlphttp": {"endpoint": "http://127.0.0.1:1"}},
        "ports": {"otlpGrpc": free_port(), "otlpHttp": free_port(), "health": free_port(),
                  "metrics": free_port()},
        "persistence": {"enabled": True, "type": "emptyDir", "mountPath": str(data),
                        "queue": {"enabled": True}}})
    cfg = tmp_path / "run.yaml"
    cfg.write_text(config_text(docs))
    env = {"PATH": "/usr/bin:/bin", "K8S_NODE_NAME": "node-1", "K8S_POD_NAME": "pod-1",
           "K8S_NAMESPACE_NAME": NAMESPACE}
    proc = subprocess.Popen([str(sidecar_bin), "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        want = {data / "queue" / "otlp_jaeger", data / "queue" / "otlphttp"}
        deadline = time.monotonic() + 20
        while not all(d.is_dir() for d in want) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        assert sorted(p.name for p in (data / "queue").iterdir()) == ["otlp_jaeger", "otlphttp"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("mode", ["daemonset", "deployment", "sidecar"])
def test_persistent_queue_needs_persistence(render_error, mode):
    err = render_error({"mode": mode, "exporters": {"jaeger": {"endpoint": JAEGER}},
                        "persistence": {"enabled": False, "queue": {"enabled": True}}})
    assert "persistence.queue.enabled needs persistence.enabled" in err, err
    assert "read-only" in err, err


@pytest.mark.parametrize("extra,message", [
    # Two sidecars on one queue folder corrupt it.
    ({"mode": "daemonset", "persistence": {"type": "pvc", "pvc": {"existingClaim": "shared"}}},
     "persistence.type=pvc in mode daemonset"),
    ({"mode": "daemonset", "persistence": {"type": "hostPath"},
      "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}},
     "updateStrategy.rollingUpdate.maxSurge must be 0"),
    ({"mode": "deployment", "persistence": {"type": "pvc"}}, "needs one pod at a time"),
    ({"mode": "deployment", "replicas": 1, "persistence": {"type": "pvc"}},
     "needs one pod at a time"),
    ({"mode": "deployment", "replicas": 1, "strategy": {"type": "Recreate"},
      "autoscaling": {"enabled": True}, "persistence": {"type": "hostPath"}},
     "needs one pod at a time"),
    # The queues must fit the volume.
    ({"persistence": {"type": "emptyDir", "emptyDir": {"sizeLimit": "300Mi"}}},
     "more than persistence.emptyDir.sizeLimit"),
    ({"mode": "deployment", "replicas": 1, "strategy": {"type": "Recreate"},
      "persistence": {"type": "pvc", "pvc": {"size": "256Mi"}}},
     "more than persistence.pvc.size"),
    # queue_size and storage are a config error in the sidecar.
    ({"config": {"exporters": {"otlp/jaeger": {"sending_queue": {"queue_size": 5000}}}}},
     "queue_size cannot be combined with storage"),
])
def test_persistent_queue_rejects_unsafe_values(render_error, extra, message):
    values = {"exporters": {"jaeger": {"endpoint": JAEGER}, "otlphttp": {"endpoint": OTLPHTTP}},
              "persistence": {"enabled": True, "queue": {"enabled": True}}}
    for k, v in extra.items():
        if k == "persistence":
            values["persistence"].update(v)
        else:
            values[k] = v
    err = render_error(values)
    assert message in err, err


def test_persistent_queue_fits_a_large_enough_volume(render):
    docs = render({"exporters": {"jaeger": {"endpoint": JAEGER}, "otlphttp": {"endpoint": OTLPHTTP}},
                   "persistence": {"enabled": True, "emptyDir": {"sizeLimit": "512Mi"},
                                   "queue": {"enabled": True}}})
    assert config_of(docs)["exporters"]["otlphttp"]["sending_queue"]["storage"]


@pytest.mark.parametrize("queue,field,hint", [
    ({"fsync": "always"}, "fsync", "batch"),
    ({"whenFull": "block"}, "whenFull", "drop_oldest"),
    ({"maxBytes": 1000}, "maxBytes", "65536|65,536"),
    ({"maxBytes": "256Mi"}, "maxBytes", "integer"),
    ({"fsyncInterval": "0s"}, "fsyncInterval", ""),
    ({"fsyncInterval": "1"}, "fsyncInterval", ""),
    ({"size": 1}, "size", ""),
])
def test_schema_rejects_bad_queue_values(render_error, queue, field, hint):
    err = render_error({"persistence": {"enabled": True, "queue": {"enabled": True, **queue}}})
    assert re.search(rf"persistence[./]queue[./]{field}|{field}", err), err
    assert "queue" in err, err
    if hint:
        assert re.search(hint, err), err


def test_recreate_strategy_drops_the_rolling_update_settings(render):
    dep = one(render({"mode": "deployment", "strategy": {"type": "Recreate"}}), "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}


# ------------------------------------------------------------------------------ trace_store


@pytest.mark.parametrize("mode", ["daemonset", "deployment"])
def test_trace_store_enabled_renders_exporter_ports_and_service(render, sidecar_bin, tmp_path, mode):
    docs = render({"mode": mode, "exporters": {"jaeger": {"endpoint": JAEGER},
                                                "traceStore": {"enabled": True, "maxBytes": 33554432,
                                                               "ttl": "30m"}}})
    cfg = config_of(docs)
    assert cfg["exporters"]["trace_store"] == {"endpoint": "0.0.0.0:16687", "max_bytes": 33554432,
                                               "max_traces": 10000, "ttl": "30m"}
    assert cfg["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger", "trace_store"]
    ports = {p["name"]: p for p in sidecar_container(workload(docs)["spec"]["template"]["spec"])["ports"]}
    assert ports["trace-query"]["containerPort"] == 16687 and "hostPort" not in ports["trace-query"]
    svc = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert svc["trace-query"] == {"name": "trace-query", "port": 16687, "targetPort": "trace-query",
                                  "protocol": "TCP", "appProtocol": "http"}
    assert_valid(sidecar_bin, tmp_path, docs)


def test_trace_store_alone_needs_no_debug_fallback_and_is_off_by_default(render, render_error, sidecar_bin, tmp_path):
    docs = render({"exporters": {"traceStore": {"enabled": True}}, "ports": {"traceQuery": 9411}})
    cfg = config_of(docs)
    assert cfg["service"]["pipelines"]["traces"]["exporters"] == ["trace_store"]
    assert cfg["exporters"]["trace_store"]["endpoint"] == "0.0.0.0:9411"
    assert_valid(sidecar_bin, tmp_path, docs)
    default = render()
    assert "trace_store" not in config_of(default)["exporters"]
    assert "trace-query" not in {p["name"] for p in one(default, "Service")["spec"]["ports"]}
    err = render_error({"exporters": {"traceStore": {"enabled": True, "maxBytes": 10}}})
    assert "maxBytes" in err


# ---------------------------------------------------------------- two tiers (docs/gateway.md)

GATEWAY_DNS = f"loom-gateway-loom-sidecar-headless.{NAMESPACE}.svc.cluster.local"


def test_gateway_tier_runs_tail_sampling_behind_a_headless_service(render, sidecar_bin, tmp_path):
    docs = render({"mode": "deployment", "tailSampling": {"enabled": True, "decisionWait": "5s"},
                   "exporters": {"jaeger": {"endpoint": JAEGER}}})
    cfg = config_of(docs)
    assert cfg["service"]["pipelines"]["traces"]["processors"] == [
        "memory_limiter", "sampler", "enrich", "tail_sampling", "batch"]
    ts = cfg["processors"]["tail_sampling"]
    assert ts["decision_wait"] == "5s" and ts["max_bytes"] == 134217728
    assert [p["type"] for p in ts["policies"]] == ["status_code", "latency", "probabilistic"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    headless = services[f"{FULLNAME}-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == services[FULLNAME]["spec"]["selector"]
    assert [p["port"] for p in headless["spec"]["ports"]] == [4317]
    assert_valid(sidecar_bin, tmp_path, docs)


def test_agent_tier_routes_through_loadbalancing_to_the_gateway(render, sidecar_bin, tmp_path):
    docs = render({"loadbalancing": {"enabled": True, "hostname": GATEWAY_DNS}})
    cfg = config_of(docs)
    lb = cfg["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    assert lb["resolver"] == {"dns": {"hostname": GATEWAY_DNS, "port": 4317, "interval": "5s"}}
    assert lb["protocol"]["otlp"]["tls"] == {"insecure": True}
    traces = cfg["service"]["pipelines"]["traces"]
    assert traces["exporters"] == ["loadbalancing"], "no debug fallback: loadbalancing is an exporter"
    assert "tail_sampling" not in traces["processors"]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-headless")]
    assert_valid(sidecar_bin, tmp_path, docs)


@pytest.mark.parametrize("values,message", [
    ({"tailSampling": {"enabled": True}}, "tailSampling.enabled needs mode: deployment"),
    ({"mode": "deployment", "loadbalancing": {"enabled": True, "hostname": GATEWAY_DNS}},
     "loadbalancing.enabled is for the agent tier"),
    ({"loadbalancing": {"enabled": True}}, "loadbalancing.enabled needs loadbalancing.hostname"),
    ({"mode": "deployment", "tailSampling": {"enabled": True, "maxBytes": 268435456}},
     "tailSampling.maxBytes (256 MiB) must be at most half"),
])
def test_two_tier_values_are_checked(render_error, values, message):
    err = render_error(values)
    assert message in err, err


@pytest.mark.parametrize("values,field", [
    ({"tailSampling": {"whenFull": "panic"}}, "tailSampling[./]whenFull"),
    ({"tailSampling": {"policies": [{"name": "x", "type": "sometimes"}]}}, "tailSampling[./]policies"),
    ({"loadbalancing": {"routingKey": "spanID"}}, "loadbalancing[./]routingKey"),
    ({"loadbalancing": {"hostname": "gw:4317"}}, "loadbalancing[./]hostname"),
])
def test_schema_rejects_bad_two_tier_values(render_error, values, field):
    err = render_error(values)
    assert re.search(field, err), f"the error does not name {field}:\n{err}"
