"""serving/deploy and `build-repo --k8s`: every rendered manifest passes a schema check offline,
says what serving needs (probes, ports, GPU, closed management APIs, the scaling metric), and the
pod's init step rebuilds exactly the repository `build-repo` wrote; the Dockerfile's Python and
numpy fit the package; the manifest's tritonserver command runs on a real tritonserver.

Core kinds: kubernetes-validate's Kubernetes 1.32 schemas, strict (an unknown field fails, as
`kubectl apply --validate=strict` does). InferenceService: the v1beta1 schema of KServe's own CRD
(tests/fixtures/kserve/SOURCE says which), with unknown fields refused wherever the CRD does not
keep them, as the API server's strict field validation does. Not checked: KServe's admission
webhook (its cross-field rules) and anything a cluster would say."""

from __future__ import annotations

import copy
import gzip
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from sketchkit.cli import cli
from sketchkit.serving.manifests import DEPLOY

yaml = pytest.importorskip("yaml", reason="needs pyyaml (the dev extra)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (the dev extra)")
import jsonschema  # noqa: E402  (kubernetes-validate's dependency)

ROOT = Path(__file__).resolve().parents[1]
KSERVE_SCHEMA = Path(__file__).parent / "fixtures" / "kserve" / "inferenceservice-v1beta1.schema.json.gz"
K8S_VERSION = "1.32.0"  # the kubectl on this machine kind
# as `serve start` and docker-compose do (issue 22): keyed, and closed to everyone
KEYED = {"inference", "statistics"}
CLOSED = {"shared-memory", "model-repository", "trace", "logging"}
TREES = ["overlays/cpu", "overlays/gpu", "kserve"]


def kustomize(path: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("needs kubectl (with its kustomize) on PATH")
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def strict(schema):
    """A CRD's structural schema with unknown fields refused where it does not preserve them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def inference_service_schema() -> dict:
    return strict(json.loads(gzip.decompress(KSERVE_SCHEMA.read_bytes())))


def validate(doc: dict, isvc_schema: dict) -> None:
    """Raises (jsonschema.ValidationError) for a manifest its kind's schema refuses."""
    if doc["kind"] == "InferenceService":
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
        jsonschema.validate(doc, isvc_schema)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("tree", TREES)
def test_every_rendered_manifest_passes_its_schema(tree, inference_service_schema):
    docs = kustomize(DEPLOY / tree)
    assert docs
    for doc in docs:
        validate(doc, inference_service_schema)


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ["spec", "template", "spec", "containers", 0, "readinessProbes"], {}),  # a typo'd field
        ("Deployment", ["spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"], "8000"),
        ("Service", ["spec", "ports", 0, "port"], "http"),
        ("HorizontalPodAutoscaler", ["spec", "metrics", 0, "pods", "target", "type"], 5),
        ("InferenceService", ["spec", "predictor", "minReplica"], 2),  # a typo'd field
        ("InferenceService", ["spec", "predictor", "autoScaling", "metrics", 0, "type"], "Prometheus"),
        ("InferenceService", ["spec", "predictor", "containers", 0, "ports", 0, "containerPort"], "8000"),
    ],
)
def test_the_schema_check_refuses_broken_manifests(kind, path, value, inference_service_schema):
    docs = kustomize(DEPLOY / "overlays" / "gpu") + kustomize(DEPLOY / "kserve")
    doc = copy.deepcopy(by_kind(docs)[kind])
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, inference_service_schema)


def nginx_directive(name: str) -> str:
    """The value of an http-server directive in serving/deploy/nginx/nginx.conf."""
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    values = {v.strip() for v in re.findall(rf"^\s*{name}\s+([^;]+);", conf, re.M)}
    assert len(values) == 1, (name, values)
    return values.pop()


def ingress_says_what_nginx_conf_says(ingress: dict) -> None:
    """Issue 25, items 2 and 8: the same retries (only what a replica never got: no
    non_idempotent, so a query of death is not sent on), timeouts and body size as nginx.conf;
    only its paths; TLS; no response header naming a replica."""
    annotations = ingress["metadata"]["annotations"]
    nginx = "nginx.ingress.kubernetes.io/"
    assert annotations[nginx + "proxy-next-upstream"] == nginx_directive("proxy_next_upstream")
    assert "non_idempotent" not in annotations[nginx + "proxy-next-upstream"]
    assert annotations[nginx + "proxy-next-upstream-tries"] == nginx_directive("proxy_next_upstream_tries")
    assert annotations[nginx + "proxy-read-timeout"] + "s" == nginx_directive("proxy_read_timeout")
    assert annotations[nginx + "proxy-connect-timeout"] + "s" == nginx_directive("proxy_connect_timeout")
    assert annotations[nginx + "proxy-body-size"] == nginx_directive("client_max_body_size").split()[-1]
    assert "X-Upstream" not in (DEPLOY / "nginx" / "nginx.conf").read_text()
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    locations = {m[2] or f"^{m[3]}$" for m in re.finditer(r"location (~ (\S+)|= (\S+)) \{\n\s+(proxy|grpc)_pass http:", conf)}
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert {p["path"] if p["pathType"] == "ImplementationSpecific" else f"^{p['path']}$" for p in paths} == locations
    assert all(p["pathType"] in ("Exact", "ImplementationSpecific") for p in paths)  # no Prefix: nothing more
    assert annotations[nginx + "use-regex"] == "true"
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] and set(tls["hosts"]) == {rule["host"] for rule in ingress["spec"]["rules"]}


def tritonserver_flags(container: dict) -> str:
    return " ".join(container["args"])


@pytest.mark.parametrize("tree", TREES)
def test_manifests_say_what_serving_needs(tree):
    docs = by_kind(kustomize(DEPLOY / tree))
    if tree == "kserve":
        pod = docs["InferenceService"]["spec"]["predictor"]
        assert docs["InferenceService"]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        query = pod["autoScaling"]["metrics"][0]["external"]["metric"]["query"]
        assert "sketchkit_sketches_in_flight" in query
    else:
        pod = docs["Deployment"]["spec"]["template"]["spec"]
        ports = {p["name"]: p["port"] for p in docs["Service"]["spec"]["ports"]}
        assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
        hpa = docs["HorizontalPodAutoscaler"]["spec"]
        assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
        assert hpa["metrics"][0]["pods"]["metric"]["name"] == "sketchkit_sketches_in_flight"
        ingress_says_what_nginx_conf_says(docs["Ingress"])
    server = pod["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    flags = tritonserver_flags(server)
    assert "--model-repository=/models/repo" in flags and "--metrics-port=8002" in flags
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        rules = dict(reversed(m.groups()) for m in re.finditer(flag + r'="([^:"]+):([^"]+)"', flags))
        assert {k: set(v.split(",")) for k, v in rules.items()} == {
            "x-sketchkit-key=$SKETCHKIT_SERVER_KEY": KEYED, "x-sketchkit-closed=$CLOSED": CLOSED}
    key = next(e for e in server["env"] if e["name"] == "SKETCHKIT_SERVER_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "sketchkit-server-key", "key": "key"}
    init = pod["initContainers"][0]
    assert init["command"] == ["sketchkit"] and init["args"][:2] == ["serve", "build-repo"]
    gpu = "nvidia.com/gpu" in server["resources"].get("limits", {})
    assert gpu == (tree != "overlays/cpu")
    flavor = init["args"][init["args"].index("--flavor") + 1]
    if flavor.startswith("$("):
        flavor = next(e["value"] for e in init["env"] if e["name"] == "SKETCHKIT_FLAVOR")
    assert flavor == ("cpu" if tree == "overlays/cpu" else "gpu")


def pod_of(doc: dict) -> dict | None:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "InferenceService":
        return doc["spec"]["predictor"]
    return None


def restricted_violations(pod: dict) -> list[str]:
    """What Pod Security Admission's "restricted" level (Kubernetes 1.32, which includes
    "baseline") refuses in a pod spec: the checks of
    https://kubernetes.io/docs/concepts/security/pod-security-standards/ that a spec can fail."""
    bad = []
    pod_sc = pod.get("securityContext", {})
    containers = pod.get("initContainers", []) + pod.get("containers", [])
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            bad.append(key)
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}  # fmt: skip
    for v in pod.get("volumes", []):
        if not set(v) - {"name"} <= allowed_volumes:
            bad.append(f"volume {v['name']}: {sorted(set(v) - {'name'})}")
    for key in pod_sc.get("sysctls", []):
        bad.append(f"sysctl {key['name']}")
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    pod_seccomp = pod_sc.get("seccompProfile", {}).get("type")
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            bad.append(f"{name}: runAsUser 0")
        if sc.get("seccompProfile", {}).get("type", pod_seccomp) not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile is not RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: capabilities add {caps['add']}")
    return bad


def check_hardened(docs: list[dict]) -> None:
    """Issue 25, item 8: every pod passes Pod Security "restricted", mounts no service-account
    token, writes only to emptyDirs (read-only root), and every container has a CPU limit; a
    NetworkPolicy opens each of the pods' ports only to named peers (metrics and gRPC are not
    open cluster-wide); the Ingress (if any) has TLS."""
    pods = [pod for doc in docs if (pod := pod_of(doc)) is not None]
    assert pods
    for pod in pods:
        assert restricted_violations(pod) == []
        assert pod["automountServiceAccountToken"] is False
        emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            assert {m["name"] for m in c["volumeMounts"]} <= emptydirs
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}
            assert "cpu" in c["resources"]["limits"], c["name"]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    opened = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), rule  # no rule opens a port to every peer
        for peer in rule["from"]:
            assert peer.get("podSelector") or peer.get("namespaceSelector", {}).get("matchLabels"), peer
            assert "ipBlock" not in peer
        for port in rule["ports"]:
            opened.setdefault(port["port"], []).append(rule["from"])
    pod_labels = [d for d in docs if pod_of(d) is not None][0]
    if pod_labels["kind"] == "Deployment":
        labels = pod_labels["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert set(opened) == {8000, 8001, 8002}
    else:
        assert policy["spec"]["podSelector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": pod_labels["metadata"]["name"]}
        assert set(opened) == {8000, 8002}
    for doc in docs:
        if doc["kind"] == "Ingress":
            ingress_says_what_nginx_conf_says(doc)


@pytest.mark.parametrize("tree", TREES)
def test_manifests_pass_pod_security_restricted_and_are_closed_to_the_cluster(tree):
    check_hardened(kustomize(DEPLOY / tree))


def test_the_restricted_check_refuses_what_the_manifests_left_out():
    """The check above is not vacuous: each hardening removed is refused."""
    pod = by_kind(kustomize(DEPLOY / "overlays" / "cpu"))["Deployment"]["spec"]["template"]["spec"]
    for undo in (lambda p: p["securityContext"].pop("runAsNonRoot"),
                 lambda p: p["securityContext"].pop("seccompProfile"),
                 lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
                 lambda p: p["initContainers"][0]["securityContext"]["capabilities"].pop("drop"),
                 lambda p: p["containers"][0]["securityContext"].update(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
                 lambda p: p.update(hostNetwork=True),
                 lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}})):  # fmt: skip
        broken = copy.deepcopy(pod)
        undo(broken)
        assert restricted_violations(broken) != []


def test_build_repo_k8s_pods_rebuild_the_same_repository(tmp_path, inference_service_schema):
    """The init step's command, taken from the rendered manifests and run through the real CLI,
    writes a repository identical to the one `build-repo --k8s` wrote here."""
    runner = CliRunner()
    options = ["--no-stateful", "--engines", "2", "--max-sketches-in-flight", "512", "--max-batch-size", "64"]
    result = runner.invoke(cli, ["serve", "build-repo", "sheep", "--name", "baa", "--out", str(tmp_path / "repo"),
                                 "--k8s", str(tmp_path / "k8s"), *options])  # fmt: skip
    assert result.exit_code == 0, result.output
    for tree, kind in (("k8s", "Deployment"), ("k8s/kserve", "InferenceService")):
        docs = kustomize(tmp_path / tree)
        for doc in docs:
            validate(doc, inference_service_schema)
        obj = by_kind(docs)[kind]
        pod = obj["spec"]["template"]["spec"] if kind == "Deployment" else obj["spec"]["predictor"]
        args = pod["initContainers"][0]["args"]
        assert args[args.index("--out") + 1] == "/models/repo"
        args[args.index("--out") + 1] = str(tmp_path / f"pod-{kind}")
        rebuilt = runner.invoke(cli, args)
        assert rebuilt.exit_code == 0, rebuilt.output
        want = sorted(p.relative_to(tmp_path / "repo") for p in (tmp_path / "repo").rglob("*") if p.is_file())
        got = sorted(p.relative_to(tmp_path / f"pod-{kind}") for p in (tmp_path / f"pod-{kind}").rglob("*") if p.is_file())
        assert got == want and any(p.parts[0] == "baa_generate" for p in got)
        for p in want:
            assert (tmp_path / f"pod-{kind}" / p).read_bytes() == (tmp_path / "repo" / p).read_bytes(), p
        assert pod["containers"][0]["resources"]["requests"]["cpu"] == "4"  # 2 engines x 2 intra-op threads
        assert pod["containers"][0]["resources"]["limits"]["cpu"] == "4"
        check_hardened(docs)
    hpa = by_kind(kustomize(tmp_path / "k8s"))["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "256"  # half the 512 busy cap


def test_build_repo_k8s_refuses_a_local_directory_and_writes_nothing(tmp_path, tiny_uncond):
    proc = subprocess.run([sys.executable, "-m", "sketchkit", "serve", "build-repo", str(tiny_uncond), "--out",
                           str(tmp_path / "repo"), "--k8s", str(tmp_path / "k8s")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: --k8s: ") and "is a local directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout
    assert not (tmp_path / "repo").exists() and not (tmp_path / "k8s").exists()


def test_dockerfile_python_and_numpy_fit_the_package():
    """The image's Python is one the package supports, and its numpy is one the package accepts
    and the server's environment needs (numpy<2: numpy 2 empties every Python-backend output)."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    dockerfile = (ROOT / "serving" / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = re.search(r"sys\.version_info\[:2\] == \((\d+), (\d+)\)", dockerfile)
    assert python, "the Dockerfile asserts the image's Python version"
    assert SpecifierSet(project["requires-python"]).contains(f"{python[1]}.{python[2]}")
    pins = {r.name: r.specifier for r in map(Requirement, re.findall(r'"([A-Za-z][\w.-]*[<>=!~][^"]*)"', dockerfile))}
    needs = {r.name: r.specifier for r in map(Requirement, project["dependencies"])}
    assert not any(pins["numpy"].contains(v) for v in ("2.0.0", "2.1.3", "2.3.5")), pins["numpy"]
    assert any(pins["numpy"].contains(v) and needs["numpy"].contains(v) for v in ("1.24.4", "1.26.4"))


@pytest.mark.triton
def test_the_manifest_tritonserver_command_runs(tmp_path):
    """The container's command from the rendered Deployment, run by bash on a real tritonserver
    with the Secret's key in its environment: ready and /metrics answer; inference and statistics
    answer with the key and 403 without; the management APIs 403, key or not."""
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install 'sketchkit[serve]')")
    from sketchkit.hub import resolve
    from sketchkit.serving.repository import RepoOptions, build_repo
    from sketchkit.serving.server import TritonServer, free_port, pytriton_dir

    KEY = "k8s-test-key-0123456789abcdef"
    server_args = by_kind(kustomize(DEPLOY / "overlays" / "cpu"))["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert server_args[:2] == ["bash", "-c"]

    class FromManifest(TritonServer):
        def command(self, backends: Path) -> list[str]:
            local = (f"exec {pytriton_dir() / 'bin' / 'tritonserver'} --backend-directory={backends} "
                     "--http-address=127.0.0.1 --grpc-address=127.0.0.1 --metrics-address=127.0.0.1 "
                     "--pinned-memory-pool-byte-size=0 --allow-gpu-metrics=false")  # fmt: skip
            script = server_args[2].replace("exec tritonserver", local).replace("/models/repo", str(self.repo))
            for old, new in ((8000, self.http_port), (8001, self.grpc_port), (8002, self.metrics_port)):
                script = script.replace(f"-port={old}", f"-port={new}")
            return ["bash", "-c", script]

        def environment(self, env, triton):
            return super().environment(env, triton) | {"SKETCHKIT_SERVER_KEY": KEY}

    build_repo([resolve("sheep")], tmp_path / "repo", RepoOptions(stateful=False), names=["sheep"])
    with FromManifest(tmp_path / "repo", free_port(), free_port(), log_path=tmp_path / "log",
                      metrics_port=free_port()) as s:  # fmt: skip
        keyed = {"x-sketchkit-key": KEY}
        generate = f"{s.http_url}/v2/models/sheep_generate/generate"
        body = json.dumps({"n": 2, "seed": 7}).encode()
        with urllib.request.urlopen(urllib.request.Request(generate, body, keyed), timeout=60) as r:
            assert len(json.loads(r.read())["lengths"]) == 2
        with urllib.request.urlopen(urllib.request.Request(s.http_url + "/v2/models/stats", headers=keyed)) as r:
            assert r.status == 200
        for method, path, headers in (("POST", "/v2/models/sheep_generate/generate", {}), ("GET", "/v2/models/stats", {}),
                                      ("GET", "/v2/systemsharedmemory/status", keyed), ("POST", "/v2/repository/index", keyed),
                                      ("GET", "/v2/logging", keyed), ("GET", "/v2/trace/setting", keyed)):  # fmt: skip
            data = body if method == "POST" else None
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(s.http_url + path, data, headers, method=method), timeout=10)
            assert refused.value.code == 403, path
        assert s.metrics_url is not None
        with urllib.request.urlopen(s.metrics_url, timeout=10) as r:
            assert b"sketchkit_sketches_in_flight" in r.read()


def test_k8s_refuses_an_option_the_pod_could_not_repeat():
    """An option `build-repo` has no flag for cannot reach the pod: refused."""
    from sketchkit.cli.serve import pod_args
    from sketchkit.errors import SketchkitError
    from sketchkit.serving.repository import RepoOptions

    with pytest.raises(SketchkitError, match="max_len has no build-repo option"):
        pod_args(["sheep"], ["sheep"], RepoOptions(max_len=500))
    assert pod_args(["sheep"], ["baa"], RepoOptions(stateful=False))[:6] == ["serve", "build-repo", "sheep", "--name", "baa", "--flavor"]
