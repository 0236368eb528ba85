"""deploy/ checked against the project (Docker and Kubernetes do not run here): every
service's image, command and environment names things that exist — CLI sub-commands parsed
by the real parser, agent names, PREFSTREAM_* settings loaded by the real loader, the
objective validated by the real validator — and the Grafana dashboard queries only metrics
a worker exports, with labels those metrics have."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest
import yaml
from prometheus_client import CollectorRegistry

from agents.pipeline import PIPELINE, WORKERS
from streams.app import build_app, consumer_group
from streams.commands.cli import parser
from streams.metrics import Metrics
from agents.objectives import load_objective, problems
from streams.security import check
from streams.settings import PREFIX, Settings, load

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
IMAGE = "prefstream:0.1.0"
SETTING_FIELDS = {f.name: f for f in Settings.__dataclass_fields__.values()}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def k8s_docs() -> list[dict]:
    return [d for p in sorted((DEPLOY / "k8s").rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == kind}


def cli(argv: list[str]):
    """The real parser's reading of a container command (it exits on anything unknown)."""
    try:
        return parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`prefstream {' '.join(argv)}` is not a valid command")


def check_env_names(env: dict) -> None:
    for name in env:
        if not name.startswith(PREFIX):
            continue
        key = name[len(PREFIX):].lower()
        if key == "config":
            continue
        if key.endswith("_file") and key[:-5] in SETTING_FIELDS:
            assert not SETTING_FIELDS[key[:-5]].repr, f"{name}: only secret settings are read from files"
            continue
        assert key in SETTING_FIELDS, f"{name} is not a setting of streams.settings.Settings"


@pytest.fixture(scope="module")
def source_topics(tmp_path_factory) -> dict[str, str]:
    """Each agent's input topic short name, read off the real faust app (nothing connects)."""
    s = load({}, broker="127.0.0.1:1", metrics_port=0, data_dir=str(tmp_path_factory.mktemp("app")))
    out = {}
    for agent in WORKERS:
        app = build_app(s, PIPELINE, (agent,))
        # the stage's StageRunner (evaluate also binds the `relabel` stage)
        [runner] = [r for r in app._extra_services if r.stage.name == agent]
        out[agent] = runner.stage.source.name.removeprefix(s.namespace + ".")
    return out


def exported() -> tuple[set[str], dict[str, set[str]]]:
    """Series names a worker exports and each metric family's labels: the Metrics factory
    plus the evaluator bias gauges and the stages' health, registered on the same registry
    as in a worker."""
    from agents.evaluators.bias import BiasGauges
    from streams.health import Health

    m = Metrics(CollectorRegistry())
    BiasGauges(m.registry)
    Health(m.registry)
    labels = {}
    for collector in list(m.registry._collector_to_names):
        for fam in collector.describe():
            labels[fam.name] = set(getattr(collector, "_labelnames", ()) or getattr(fam, "_labelnames", ()))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for fam in m.registry.collect():
        for suffix in suffixes[fam.type]:
            names.add(fam.name + suffix)
            labels[fam.name + suffix] = labels[fam.name] | ({"le"} if suffix == "_bucket" else set())
    return names, labels


# ---------------------------------------------------------------------------------- compose

def test_compose_runs_kafka_kraft_and_vllm_on_a_gpu():
    svc = compose()["services"]
    kafka = svc["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"] and "zookeeper" not in str(kafka).lower()
    vllm = svc["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    [gpu] = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name, s in svc.items():
        image = s.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image ({image!r})"


def test_compose_prefstream_services_use_real_commands_agents_and_settings():
    c = compose()
    svc = c["services"]
    ours = {n: s for n, s in svc.items() if s.get("image") == IMAGE}
    assert ours and all((DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).resolve().is_file()
                        for s in ours.values())
    groups, agents_seen = set(), []
    spec = load_objective(DEPLOY / "objective.yaml")
    for name, s in ours.items():
        args = cli(s["command"])
        env = s["environment"]
        check_env_names(env)
        settings = load({k: str(v) for k, v in env.items()})
        check(settings)
        assert settings.metrics_host == "0.0.0.0", f"{name}: Prometheus must reach /metrics from its container"
        assert not problems(spec, settings), problems(spec, settings)
        if args.command == "worker":
            agents = args.agents.split(",")
            assert set(agents) <= set(WORKERS)
            agents_seen += agents
            assert args.metrics_port == 9464 and s["deploy"]["replicas"] >= 1
            # healthy while no stage is blocked: the worker's readiness endpoint on its metrics port
            probe = " ".join(s["healthcheck"]["test"])
            assert f"http://127.0.0.1:{args.metrics_port}/readyz" in probe, name
            groups.add(settings.group_id)
        if args.command == "objective":
            assert args.objective_command == "apply"
            mounts = {v.split(":")[1]: v.split(":")[0] for v in s["volumes"]}
            assert (DEPLOY / mounts[args.file]).is_file(), f"{name}: {args.file} is not mounted from deploy/"
    assert sorted(agents_seen) == sorted(WORKERS), "one service per agent"
    assert len(groups) == len(WORKERS), "each agent its own consumer group"
    # the workers start after the topics exist and the objective is published
    assert svc["synthesize"]["depends_on"]["objective"]["condition"] == "service_completed_successfully"
    assert svc["synthesize"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    # the objective's model is the one vLLM serves, at the URL the workers use
    served = svc["vllm"]["command"][svc["vllm"]["command"].index("--served-model-name") + 1]
    port = svc["vllm"]["command"][svc["vllm"]["command"].index("--port") + 1]
    assert {g.model for g in spec.synthesis.generators} | {spec.evaluation.judge.model} == {served}
    assert svc["curate"]["environment"]["PREFSTREAM_OPENAI_BASE_URL"] == f"http://vllm:{port}/v1"


def test_dockerfile_builds_the_package_the_cli_comes_from():
    text = (DEPLOY / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (DEPLOY.parent / src).exists(), f"COPY {src}: no such path in the repository"
    assert 'ENTRYPOINT ["prefstream"]' in text
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    assert 'prefstream = "streams.commands.cli:main"' in pyproject
    check_env_names(dict(re.findall(r"(PREFSTREAM_\w+)=(\S+)", text)))
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for pkg in ("schemas", "streams", "agents"):
        assert f"!{pkg}/**" in ignore


def test_prometheus_scrapes_every_agent_service_on_its_metrics_port():
    """Every worker and the tap (its stale-policy counter) serve /metrics on the port Prometheus scrapes."""
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    svc = compose()["services"]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    [sd] = jobs["prefstream"]["dns_sd_configs"]
    served = {n for n, s in svc.items() if s.get("image") == IMAGE and s["command"][0] in ("worker", "tap")}
    assert "tap" in served and set(sd["names"]) == served
    assert {cli(svc[n]["command"]).metrics_port for n in served} == {sd["port"]}
    for job in ("vllm", "kafka-exporter"):
        for target in jobs[job]["static_configs"][0]["targets"]:
            assert target.split(":")[0] in svc, f"{job} scrapes {target}, which compose does not run"


def test_grafana_is_provisioned_with_the_dashboard_and_the_datasource():
    svc = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in svc["volumes"])
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/prefstream.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == path
    assert (DEPLOY / "grafana/dashboards" / Path(svc["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
            .name).is_file()
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    dash = json.loads((DEPLOY / "grafana/dashboards/prefstream.json").read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    assert uids == {ds["uid"]} and ds["url"] == "http://prometheus:9090"


_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
PROMQL_WORDS = {"sum", "avg", "max", "min", "count", "rate", "irate", "increase", "histogram_quantile", "by",
                "without", "label_values", "le", "and", "or", "unless", "on", "ignoring", "m", "s", "h",
                "abs", "deriv", "avg_over_time", "offset"}
# kafka-exporter's series, on the dashboard and in the alerts only because compose runs kafka-exporter
KAFKA_EXPORTER = {"kafka_consumergroup_lag_sum": {"consumergroup", "topic"}}


def promql_metrics(expr: str, labels: dict[str, set[str]], where: str) -> set[str]:
    """The metric names ``expr`` queries, each checked to be exported (``labels``: name →
    its label names) with every label it selects on or aggregates by."""
    metrics = [(n, sel) for n, sel in _SELECTOR.findall(re.sub(r'"[^"]*"', '""', expr))
               if n not in PROMQL_WORDS and not n.isdigit() and "_" in n]
    assert metrics, f"{where}: {expr!r} names no metric"
    for name, sel in metrics:
        assert name in labels, f"{where}: {name} is not exported by prefstream"
        for label in re.findall(r"(\w+)\s*[=!]~?", sel):
            assert label in labels[name], f"{where}: {name} has no label {label!r}"
    have = set().union(*(labels[n] for n, _ in metrics))
    for group in _BY.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in have, f"{where}: no metric in {expr!r} has the label {label!r}"
    return {n for n, _ in metrics}


def test_dashboard_is_valid_and_queries_only_exported_metrics_and_labels():
    dash = json.loads((DEPLOY / "grafana/dashboards/prefstream.json").read_text())
    names, labels = exported()
    assert "kafka-exporter" in compose()["services"]
    labels = {**labels, **KAFKA_EXPORTER}
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"] for v in dash["templating"]["list"]}
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    used = set()
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "hwxy") and g["x"] + g["w"] <= 24, p["title"]
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            expr = t["expr"]
            for var in re.findall(r"\$(\w+)", expr):
                assert var in variables or var.startswith("__"), f"{p['title']}: ${var} is not defined"
            used |= promql_metrics(expr, labels, p["title"])
    assert all(n in names or n in KAFKA_EXPORTER for n in used)
    # every metric the factory defines has a panel
    families = {fam.name for fam in Metrics().registry.collect()}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert not families - shown, sorted(families - shown)


def alert_rules() -> list[dict]:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"]]


def test_alert_rules_query_only_exported_metrics_and_name_the_fix():
    names, labels = exported()
    labels = {**labels, **KAFKA_EXPORTER}
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    for r in rules:
        used = promql_metrics(r["expr"], labels, r["alert"])
        assert used <= names | set(KAFKA_EXPORTER), r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning"}, r["alert"]
        assert r["for"], f"{r['alert']}: alert only on a condition that lasts"
        ann = r["annotations"]
        assert ann["summary"].strip() and "Fix:" in ann["description"], f"{r['alert']}: say what to do"
    # the alerts watch what the issue names: blocked stages, dead letters, lag, model errors, bias
    watched = set().union(*(promql_metrics(r["expr"], labels, r["alert"]) for r in rules))
    assert {"prefstream_stage_blocked", "prefstream_dead_letters_total", "kafka_consumergroup_lag_sum",
            "prefstream_model_requests_total", "prefstream_bias"} <= watched


def test_prometheus_loads_the_alert_rules_and_the_operator_gets_the_same():
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [rule_file] = prom["rule_files"]
    assert (DEPLOY / rule_file).resolve() == (DEPLOY / "prometheus/alerts.yml").resolve()
    # compose mounts the rule file where the config (in /etc/prometheus) finds it
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["prometheus"]["volumes"])
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./" + rule_file] == "/etc/prometheus/" + rule_file
    [rule] = by_kind("PrometheusRule").values()
    assert rule["spec"]["groups"] == yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"], \
        "k8s/optional/prometheusrule.yaml's spec.groups must be deploy/prometheus/alerts.yml's groups"
    [pm] = by_kind("PodMonitor").values()
    assert rule["metadata"]["labels"] == pm["metadata"]["labels"]  # the same Prometheus picks up both


# ------------------------------------------------------------------------------- kubernetes

def test_kustomization_lists_every_manifest_it_needs():
    kust = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())
    listed = set(kust["resources"])
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files
    assert kust["images"][0]["name"] + ":" + kust["images"][0]["newTag"] == IMAGE


def test_kubectl_kustomize_renders_every_agent_with_its_settings_and_probes():
    """What `kubectl apply -k deploy/k8s` would send, rendered by the real client (offline)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian's package: kubernetes-client; .ci/run installs it)")
    proc = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kust = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())
    listed = [d for r in kust["resources"] for d in yaml.safe_load_all((DEPLOY / "k8s" / r).read_text()) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in listed)
    assert all(d["metadata"].get("namespace") == kust["namespace"] for d in docs if d["kind"] != "Namespace")
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    image = f"{kust['images'][0]['newName']}:{kust['images'][0]['newTag']}"
    workers = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c.get("args", [""])[0] not in ("worker", "objective"):
                continue
            assert c["image"] == image, d["metadata"]["name"]
            for ref in c.get("envFrom", []):
                settings = rendered["ConfigMap", ref["configMapRef"]["name"]]["data"]
                check_env_names(settings)
                load({k: v for k, v in settings.items() if not k.endswith(("_FILE", "_CAFILE"))})
            if c["args"][0] != "worker":
                continue
            args = cli(c["args"])
            workers[args.agents] = d["metadata"]["name"]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = c[probe]["httpGet"]
                assert get["path"] == path and ports[get["port"]] == args.metrics_port, (d["metadata"]["name"], probe)
    assert sorted(workers) == sorted(WORKERS), workers
    objective = rendered["ConfigMap", "prefstream-objective"]["data"]["objective.yaml"]
    assert yaml.safe_load(objective)["name"] == load_objective(DEPLOY / "objective.yaml").name


def _container_env(c: dict, secret: dict, tmp_path: Path) -> dict[str, str]:
    """The environment a container gets: its ConfigMaps, its values, and its Secret
    references resolved from secret.yaml; *_FILE paths are moved into ``tmp_path``."""
    cms = by_kind("ConfigMap")
    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        env.update(cms[ref["configMapRef"]["name"]]["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], ref
            env[e["name"]] = secret["stringData"][ref["key"]]
    for k, v in list(env.items()):
        if k.endswith(("_FILE", "_CAFILE")) and v.startswith("/etc/prefstream/kafka/"):
            f = tmp_path / Path(v).name
            f.write_text(secret["stringData"][Path(v).name])
            env[k] = str(f)
    return env


def _mounted_secret_keys(spec: dict) -> set[str]:
    return {i["key"] for v in spec["volumes"] if "secret" in v for i in v["secret"].get("items", [])}


def test_one_deployment_per_agent_with_real_commands_settings_and_requests(tmp_path):
    deployments, secret = by_kind("Deployment"), by_kind("Secret")["prefstream-kafka"]
    spec = load_objective(DEPLOY / "objective.yaml")
    objective_cm = by_kind("ConfigMap")["prefstream-objective"]["data"]["objective.yaml"]
    assert msgspec.convert({**yaml.safe_load(objective_cm), "type": "objective.v1"}, type(spec)) == spec
    workers, groups = {}, set()
    for name, d in deployments.items():
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), name
        for c in pod["spec"]["containers"]:
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
            if c["image"] != IMAGE:
                continue
            args = cli(c["args"])
            env = _container_env(c, secret, tmp_path)
            check_env_names(env)
            settings = load(env)
            check(settings)  # SASL: mechanism, user and password all present
            assert settings.sasl_password == secret["stringData"]["password"]
            assert _mounted_secret_keys(pod["spec"]) <= set(secret["stringData"])
            assert not problems(spec, settings), problems(spec, settings)
            if args.command == "worker":
                [agent] = args.agents.split(",")
                workers[agent] = d
                groups.add(settings.group_id)
                ann = pod["metadata"]["annotations"]
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                assert ann["prometheus.io/scrape"] == "true"
                assert int(ann["prometheus.io/port"]) == ports["metrics"] == args.metrics_port
                # alive while the process serves HTTP; ready while no stage of it is blocked
                assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
                assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, name
    assert sorted(workers) == sorted(WORKERS) and len(groups) == len(WORKERS)
    vllm = deployments["vllm"]["spec"]["template"]["spec"]["containers"][0]
    assert vllm["image"].startswith("vllm/vllm-openai:") and vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    svc = by_kind("Service")["vllm"]
    base_url = by_kind("ConfigMap")["prefstream-settings"]["data"]["PREFSTREAM_OPENAI_BASE_URL"]
    assert base_url == f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}/v1"


def test_objective_job_publishes_the_mounted_objective():
    job = by_kind("Job")["prefstream-objective"]["spec"]["template"]["spec"]
    [c] = job["containers"]
    args = cli(c["args"])
    assert (args.command, args.objective_command) == ("objective", "apply")
    mount = next(m for m in c["volumeMounts"] if args.file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in job["volumes"] if v["name"] == mount["name"])
    cm = by_kind("ConfigMap")[volume["configMap"]["name"]]
    assert Path(args.file).name in cm["data"]


def test_keda_scales_each_stage_on_its_own_group_and_topic(source_topics):
    deployments, settings = by_kind("Deployment"), by_kind("ConfigMap")["prefstream-settings"]["data"]
    auth = by_kind("TriggerAuthentication")
    secret = by_kind("Secret")["prefstream-kafka"]
    for ref in auth["prefstream-kafka"]["spec"]["secretTargetRef"]:
        assert ref["key"] in secret["stringData"]
    scaled = by_kind("ScaledObject")
    assert len(scaled) == len(WORKERS)
    for so in scaled.values():
        d = deployments[so["spec"]["scaleTargetRef"]["name"]]
        c = d["spec"]["template"]["spec"]["containers"][0]
        agent = cli(c["args"]).agents
        group = consumer_group(load({}, group=next(e["value"] for e in c["env"] if e["name"] == "PREFSTREAM_GROUP")),
                               agent)
        [trig] = so["spec"]["triggers"]
        meta = trig["metadata"]
        assert meta["consumerGroup"] == group
        assert meta["topic"] == f"{settings['PREFSTREAM_NAMESPACE']}.{source_topics[agent]}"
        assert meta["bootstrapServers"] == settings["PREFSTREAM_BROKER"]
        assert so["spec"]["maxReplicaCount"] <= int(settings["PREFSTREAM_PARTITIONS"])
        assert trig["authenticationRef"]["name"] in auth


def test_podmonitor_selects_the_worker_pods_metrics_port():
    [pm] = by_kind("PodMonitor").values()
    sel = pm["spec"]["selector"]["matchLabels"]
    workers = [d for d in by_kind("Deployment").values()
               if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
    assert workers
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    for d in workers:
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c["args"][0] == "worker":
                assert port in {p["name"] for p in c["ports"]}


def test_kafka_acls_let_only_the_admin_write_the_objectives(tmp_path):
    """deploy/kafka-acls.sh, run with a stand-in `kafka-acls.sh` that records its arguments:
    every topic it names exists; the control topics are written by the ADMIN user alone (the
    others are denied); the ingest user writes only prompts and feedback."""
    import json as _json
    import os
    import subprocess

    from streams.topics import ALL

    log = tmp_path / "calls.jsonl"
    stub = tmp_path / "kafka-acls.sh"
    stub.write_text("#!/usr/bin/env python3\nimport json, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "BOOTSTRAP": "k:9093", "CONFIG": "a.properties",
           "NS": "ns", "ADMIN": "User:admin", "WORKER": "User:worker", "INGEST": "User:ingest", "TAP": "User:tap"}
    subprocess.run(["bash", str(DEPLOY / "kafka-acls.sh")], env=env, check=True, timeout=60)
    calls = [_json.loads(line) for line in log.read_text().splitlines()]
    assert calls and all(c[:5] == ["--bootstrap-server", "k:9093", "--command-config", "a.properties", "--add"]
                         for c in calls)
    shorts = {t.short for t in ALL}
    writers: dict[str, set[str]] = {}
    denied: dict[str, set[str]] = {}
    for args in calls:
        opts = list(zip(args, args[1:]))
        topics = [v for k, v in opts if k == "--topic"]
        assert all(t == "ns." or t.removeprefix("ns.") in shorts for t in topics), topics
        if ("--operation", "Write") in opts:
            for t in topics:
                writers.setdefault(t, set()).update(v for k, v in opts if k == "--allow-principal")
                denied.setdefault(t, set()).update(v for k, v in opts if k == "--deny-principal")
    for control in ("ns.objectives", "ns.objective-history"):
        assert writers[control] == {"User:admin"}
        assert denied[control] == {"User:worker", "User:ingest", "User:tap"}
    for control in ("ns.policies", "ns.policy-history"):  # which adapters the workers load
        assert writers[control] == {"User:admin", "User:prefstream-trainer"}
        assert denied[control] == {"User:worker", "User:ingest", "User:tap"}
    assert {t for t, who in writers.items() if "User:ingest" in who} == {"ns.prompts", "ns.feedback"}
    assert "ns.objectives" not in {t for t, who in writers.items() if "User:worker" in who}
