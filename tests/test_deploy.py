"""Static checks of deploy/: the image, compose, nginx and Kubernetes files agree with the code.

Nothing here builds or runs a container. YAML is read with PyYAML's safe loader, made stricter
where YAML 1.1 reads a file differently than it looks: a repeated key (the last one would win
silently) and a base-60 number (`ports: [22:22]` is the integer 1342) fail the test.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from ledger.settings import EndpointSettings
from tests.support.constants import ROOT
from tests.support.deploy import DEPLOY, nginx_block, nginx_conf, nginx_seconds

K8S = DEPLOY / "k8s"

SECRET_SETTINGS = {"WECHATPAY_APIV3_KEY", "LEDGER_ADMIN_TOKEN", "LEDGER_DATABASE_URL"}
LIVENESS, READINESS = "/healthz", "/readyz"
API_PORT = 8000
SERVE = ["payledger", "serve", "--host", "0.0.0.0", "--port", str(API_PORT)]


# -- reading YAML ------------------------------------------------------------------------------

_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing repeated keys and base-60 numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise AssertionError(f"{node.start_mark}: duplicate key {repeated[0]!r}")
        return super().construct_mapping(node, deep=deep)

    def construct_sexagesimal_guard(self, node: yaml.ScalarNode) -> Any:
        if _SEXAGESIMAL.fullmatch(node.value):
            raise AssertionError(f"{node.start_mark}: {node.value} reads as a base-60 number in YAML 1.1: quote it")
        if node.tag.endswith(":int"):
            return self.construct_yaml_int(node)
        return self.construct_yaml_float(node)


for _tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
    _StrictLoader.add_constructor(_tag, _StrictLoader.construct_sexagesimal_guard)


def load_yaml(path: Path) -> list[Any]:
    """The documents of a YAML file (empty documents dropped)."""
    text = path.read_text(encoding="utf-8")
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]


def test_the_yaml_reader_refuses_what_reads_otherwise_than_it_looks(tmp_path: Path) -> None:
    sample = tmp_path / "sample.yaml"
    sample.write_text('x-base: &base\n  image: "payledger:local"\nsvc:\n  <<: [*base]\n  image: other\n  mode: 0440\n')
    assert load_yaml(sample) == [{"x-base": {"image": "payledger:local"}, "svc": {"image": "other", "mode": 0o440}}]
    sample.write_text("ports:\n  - 22:22\n")
    with pytest.raises(AssertionError, match="base-60"):
        load_yaml(sample)
    sample.write_text("a: 1\nb: 2\na: 3\n")
    with pytest.raises(AssertionError, match="duplicate key 'a'"):
        load_yaml(sample)


# -- helpers -------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(doc, dict)
    return doc


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in k8s_files():
        for doc in load_yaml(path):
            yield path, doc


def deployments() -> dict[str, dict[str, Any]]:
    """Deployments by the payledger subcommand their main container runs."""
    found: dict[str, dict[str, Any]] = {}
    for _, obj in k8s_objects():
        if obj["kind"] == "Deployment":
            command = main_container(obj)["args"][1]
            assert command not in found, f"two Deployments run payledger {command}"
            found[command] = obj
    return found


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "payledger"]
    return container


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical.splitlines() if line.strip()]


def dockerfile_cmd() -> list[str]:
    (cmd,) = [args for op, args in dockerfile_instructions() if op == "CMD"]
    argv = json.loads(cmd)
    assert isinstance(argv, list), "CMD must be in exec (JSON) form"
    return argv


def ledger_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("image", "").startswith("payledger")}


def service_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", dockerfile_cmd())
    assert isinstance(command, list), "compose commands must be lists (exec form, no shell)"
    return command


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def check_payledger_argv(argv: list[str], where: str) -> argparse.Namespace:
    """`argv` is a real payledger command line; returns its parse."""
    assert argv[0] == "payledger", f"{where}: {argv} does not run payledger"
    parser = build_parser()
    known = subcommands(parser)
    assert len(argv) > 1 and argv[1] in known, (
        f"{where}: `payledger {' '.join(argv[1:])}` names no payledger subcommand ({', '.join(sorted(known))})"
    )
    try:
        return parser.parse_args(argv[1:])
    except SystemExit:
        raise AssertionError(f"{where}: payledger rejects the arguments {argv[1:]}") from None


def documented_settings() -> set[str]:
    """The settings table of docs/configuration.md."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    section = doc.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1]))
    assert {"LEDGER_DATABASE_URL", "WECHATPAY_MCHID"} <= names, "docs/configuration.md settings table not found"
    return names


def env_example() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, commented) for every assignment in ledger.env.example."""
    found = {}
    for line in (DEPLOY / "ledger.env.example").read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            found[match[2]] = (match[3], match[1] is not None)
    return found


# -- every file parses; commands are real ---------------------------------------------------------


def test_every_yaml_file_parses_and_k8s_objects_are_namespace_agnostic() -> None:
    assert isinstance(compose()["services"], dict)
    assert k8s_files(), "deploy/k8s has no manifests"
    for path, obj in k8s_objects():
        assert isinstance(obj, dict) and obj.get("apiVersion") and obj.get("kind"), path
        if obj["kind"] != "Kustomization":
            assert obj["metadata"]["name"], path
            assert "namespace" not in obj["metadata"], f"{path}: namespace is chosen when applying"
        else:
            assert "namespace" not in obj, f"{path}: namespace is chosen when applying"


def test_kustomization_lists_every_manifest_but_never_the_secret_template() -> None:
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    expected = {p.name for p in k8s_files() if p.name != "kustomization.yaml" and ".example." not in p.name}
    assert sorted(resources) == sorted(expected)
    assert all((K8S / r).is_file() for r in resources)
    assert not [r for r in resources if ".example." in r], "placeholder secrets would overwrite the real ones"
    images = {i["name"] for i in kustomization.get("images", [])}
    for _, obj in k8s_objects():
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            for container in pod["containers"] + pod.get("initContainers", []):
                assert container["image"] in images, f"{obj['metadata']['name']}: image not set by kustomization"


def test_every_command_is_a_payledger_subcommand_with_valid_arguments() -> None:
    argvs = {"Dockerfile CMD": dockerfile_cmd()}
    argvs |= {f"compose service {name}": service_argv(s) for name, s in ledger_services().items()}
    for _, obj in k8s_objects():
        if obj["kind"] == "Deployment":
            container = main_container(obj)
            # `command` would replace the image's ENTRYPOINT (tini, which forwards SIGTERM).
            assert "command" not in container, f"{obj['metadata']['name']}: use args, not command"
            argvs[f"Deployment {obj['metadata']['name']}"] = container["args"]
    for where, argv in argvs.items():
        args = check_payledger_argv(argv, where)
        if argv[1] == "serve":
            assert (args.host, args.port, args.dev) == ("0.0.0.0", API_PORT, False), where


def test_commands_mentioned_in_deploy_files_are_real() -> None:
    """`payledger X ...` in inline code and README code blocks names a real command."""
    mentions = 0
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        text = path.read_text()
        snippets = re.findall(r"`([^`\n]+)`", text)
        if path.suffix == ".md":
            for block in re.findall(r"```\w*\n(.*?)```", text, re.S):
                snippets += block.splitlines()
        for snippet in snippets:
            for match in re.finditer(r"(?<![\w/.-])payledger[ \t]+([a-z][^#|;&]*)", snippet):
                argv = ["payledger", *shlex.split(match[1].replace("...", ""))]
                check_payledger_argv(argv, f"{path.relative_to(ROOT)}: {snippet.strip()!r}")
                mentions += 1
    assert mentions >= 8


def test_the_process_topology() -> None:
    services = ledger_services()
    by_command: dict[str, list[tuple[str, int]]] = {}
    for name, service in services.items():
        argv = service_argv(service)
        by_command.setdefault(argv[1], []).append((name, service.get("deploy", {}).get("replicas", 1)))
        if argv[1] in ("reconcile", "bills"):
            assert "--follow" in argv, name
    assert sum(r for _, r in by_command["serve"]) >= 2
    assert [r for _, r in by_command["project"]] == [1], "one projector (a second one only waits on the lock)"
    assert [r for _, r in by_command["dispatch"]] == [2]
    assert sum(r for _, r in by_command["reconcile"]) >= 1
    assert [r for _, r in by_command["bills"]] == [1], "one daily-bills follower"
    assert set(by_command) == {"serve", "project", "dispatch", "reconcile", "bills"}

    k8s = deployments()
    assert set(k8s) == {"serve", "project", "dispatch", "reconcile", "bills"}
    replicas = {command: d["spec"]["replicas"] for command, d in k8s.items()}
    assert replicas == {"serve": 2, "project": 1, "dispatch": 2, "reconcile": 1, "bills": 1}
    assert k8s["project"]["spec"]["strategy"]["type"] == "Recreate"
    assert "--follow" in main_container(k8s["reconcile"])["args"]
    assert main_container(k8s["bills"])["args"] == ["payledger", "bills", "reconcile", "--follow"]
    # A bill is downloaded to /tmp before it is kept: on disk, with room for a big merchant's day.
    [tmp] = [v for v in k8s["bills"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp"]
    assert "medium" not in tmp["emptyDir"] and tmp["emptyDir"]["sizeLimit"] == "2Gi"


# -- the image -----------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_image_that_serves_by_default() -> None:
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert stages and all(s.split()[0] == "python:3.11-slim" for s in stages)
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    users = [args for op, args in final if op == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot checks it)"
    assert dockerfile_cmd() == SERVE
    assert ("EXPOSE", str(API_PORT)) in instructions
    (healthcheck,) = [args for op, args in instructions if op == "HEALTHCHECK"]
    assert "python" in healthcheck and f"127.0.0.1:{API_PORT}{LIVENESS}" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


def test_dockerfile_installs_the_project_without_dev_dependencies_or_secrets() -> None:
    instructions = dockerfile_instructions()
    copied = {src for op, args in instructions if op == "COPY" and "--from" not in args for src in args.split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "ledger", "api", "projections"}
    installs = [args for op, args in instructions if op == "RUN" and "pip install" in args]
    assert installs and not [i for i in installs if "[test]" in i or " -e " in i or "pytest" in i]
    known = documented_settings()
    for op, args in instructions:
        if op in ("ENV", "ARG"):
            assert not [name for name in known if name in args], f"{op} {args}: settings come from the environment"
            assert not re.search(r"(?i)password|secret|token|apiv3", args), f"{op} {args}"


# -- compose -------------------------------------------------------------------------------------


def test_compose_postgres_and_the_ledger_services() -> None:
    doc = compose()
    postgres = doc["services"]["postgres"]
    assert postgres["image"].split(":")[1].split(".")[0] == "15"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    data = [v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert data and data[0].split(":")[0] in doc["volumes"]

    services = ledger_services()
    assert len(services) >= 5
    for name, service in services.items():
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        env_files = [e["path"] if isinstance(e, dict) else e for e in service["env_file"]]
        assert "ledger.env.example" in env_files, name
        assert all((DEPLOY / f).is_file() or f == "ledger.env" for f in env_files), name
        assert any(v.startswith("./secrets:") and v.endswith(":ro") for v in service["volumes"]), name
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile"
        )
        serves_http = service_argv(service)[1] == "serve"
        # The image's HEALTHCHECK calls /healthz: right for serve, always failing for workers.
        assert service.get("healthcheck", {}).get("disable", False) is not serves_http, name
        assert "LEDGER_DATABASE_URL" in service["environment"], name
        assert "@postgres:5432/" in service["environment"]["LEDGER_DATABASE_URL"], name
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert {"ledger.env", "secrets/", ".env"} <= set(ignored), "real settings and keys must stay out of git"


def test_compose_proxy_load_balances_the_api_replicas() -> None:
    doc = compose()
    proxy = doc["services"]["proxy"]
    assert proxy["image"].split(":")[0] in ("nginx", "caddy")
    mounts = [v.split(":") for v in proxy["volumes"]]
    assert ["./nginx.conf", "/etc/nginx/nginx.conf", "ro"] in mounts
    api = {name for name, s in ledger_services().items() if service_argv(s)[1] == "serve"}
    assert len(api) >= 2
    assert {name for name, d in proxy["depends_on"].items() if d["condition"] == "service_healthy"} >= api
    upstream = nginx_block(nginx_conf(), "upstream payledger_api")
    servers = set(re.findall(r"^\s*server\s+(\S+)", upstream, re.M))
    assert servers == {f"{name}:{API_PORT}" for name in api}


def test_compose_runs_nats_with_jetstream_and_rabbitmq_and_configures_the_ledger_for_both() -> None:
    doc = compose()
    nats, rabbit = doc["services"]["nats"], doc["services"]["rabbitmq"]
    assert "--jetstream" in nats["command"] and "healthcheck" in nats
    assert "stream add PAYMENTS --subjects 'payments.>'" in " ".join(doc["services"]["nats-streams"]["command"])
    assert rabbit["environment"]["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD:?")
    content = doc["configs"]["payledger-brokers"]["content"].replace(
        "${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD in deploy/.env}", "pw"
    )
    tables = tomllib.loads(content)["endpoints"]
    endpoints = [EndpointSettings.from_table(t, "endpoints.") for t in tables]
    assert [(e.id, e.url) for e in endpoints] == [
        ("nats-payments", "nats://nats:4222/payments"),
        ("rabbitmq-payments", "amqp://ledger:pw@rabbitmq:5672/payledger?exchange=payments"),
    ]
    assert rabbit["environment"]["RABBITMQ_DEFAULT_VHOST"] == "payledger"
    for name, service in ledger_services().items():
        assert service["environment"]["LEDGER_CONFIG"] == "${LEDGER_CONFIG:-/etc/payledger/brokers.toml}", name
        assert {"source": "payledger-brokers", "target": "/etc/payledger/brokers.toml"} in service["configs"], name
    dispatchers = [s for s in ledger_services().values() if service_argv(s)[1] == "dispatch"]
    assert all({"nats", "rabbitmq"} <= set(s["depends_on"]) for s in dispatchers)
    assert {"natsdata", "rabbitdata"} <= set(doc["volumes"])


# -- nginx ---------------------------------------------------------------------------------------


def test_nginx_passes_the_raw_body_and_headers_unchanged_within_the_limits() -> None:
    conf = nginx_conf()
    assert re.search(r"^\s*client_max_body_size\s+64k;", conf, re.M)
    assert re.search(r"^\s*proxy_request_buffering\s+(on|off);", conf, re.M)
    assert re.search(r"^\s*proxy_pass_request_body\s+on;", conf, re.M)
    for forbidden in ("proxy_set_body", "proxy_pass_request_body off", "proxy_pass_request_headers off", "sub_filter"):
        assert forbidden not in conf, forbidden
    assert not re.search(r"proxy_set_header\s+wechatpay-", conf, re.I), "Wechatpay-* headers must pass unchanged"
    passes = re.findall(r"proxy_pass\s+([^;]+);", conf)
    assert passes and all(re.fullmatch(r"http://[\w.-]+(:\d+)?", p) for p in passes), (
        f"{passes}: a URI part in proxy_pass rewrites the request path"
    )


def test_nginx_answers_wechat_notifications_within_five_seconds() -> None:
    notify = nginx_block(nginx_conf(), "location /wechatpay/notify")
    assert "proxy_pass" in notify
    timeouts = dict(re.findall(r"(proxy_(?:connect|send|read|next_upstream)_timeout)\s+(\S+);", notify))
    assert {"proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"} <= set(timeouts)
    for directive, value in timeouts.items():
        assert nginx_seconds(value) < 5, f"{directive} {value}: WeChat Pay stops waiting at 5 s"


# -- settings ------------------------------------------------------------------------------------


def test_env_example_documents_every_setting_with_placeholders_only() -> None:
    example = env_example()
    settings = documented_settings()
    assert settings <= set(example), f"missing from ledger.env.example: {sorted(settings - set(example))}"
    assert set(example) <= settings, f"not a setting: {sorted(set(example) - settings)}"
    assert all(commented for _, commented in example.values()), "the committed example must set nothing"
    for name in SECRET_SETTINGS:
        assert "REPLACE" in example[name][0], f"{name}: placeholder values only"


def test_k8s_config_and_secrets_split_the_settings() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for _, o in k8s_objects() if o["kind"] != "Kustomization"}
    settings = documented_settings()
    config = objects["ConfigMap", "payledger-config"]["data"]
    assert set(config) <= settings and not set(config) & SECRET_SETTINGS
    assert all(isinstance(v, str) for v in config.values()), "ConfigMap values must be strings"
    secret = objects["Secret", "payledger-secrets"]["stringData"]
    assert set(secret) == SECRET_SETTINGS
    assert all("REPLACE" in value for value in secret.values())
    key_files = objects["Secret", "payledger-merchant-keys"]["stringData"]

    for (kind, name), obj in objects.items():
        if kind != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        env_from = main_container(obj)["envFrom"]
        assert {"configMapRef": {"name": "payledger-config"}} in env_from, name
        assert {"secretRef": {"name": "payledger-secrets"}} in env_from, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in main_container(obj)["volumeMounts"]}
        for setting, path in config.items():
            if setting.endswith("_FILE"):
                folder, _, file = path.rpartition("/")
                mount = mounts.get(folder)
                assert mount is not None and mount.get("readOnly") is True, f"{name}: {setting} not mounted read-only"
                assert volumes[mount["name"]]["secret"]["secretName"] == "payledger-merchant-keys", name
                assert file in key_files, f"{setting}: {file} is not in the payledger-merchant-keys template"


# -- Kubernetes probes and pod settings --------------------------------------------------------


def test_api_deployment_probes_and_graceful_shutdown() -> None:
    api = deployments()["serve"]
    pod = api["spec"]["template"]["spec"]
    container = main_container(api)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": API_PORT}
    assert container["readinessProbe"]["httpGet"]["path"] == READINESS
    assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            port = container[probe]["httpGet"]["port"]
            assert ports.get(port, port) == API_PORT, probe
            assert container[probe]["httpGet"]["path"] in (LIVENESS, READINESS), probe
    assert pod["terminationGracePeriodSeconds"] == 30
    pre_stop = container["lifecycle"]["preStop"]
    seconds = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else int(pre_stop["exec"]["command"][-1])
    assert pre_stop.get("exec", {}).get("command", ["sleep"])[0] == "sleep"
    assert 0 < seconds < pod["terminationGracePeriodSeconds"] - 10, "drain, then leave time for a clean shutdown"


def test_every_deployment_runs_non_root_with_resources() -> None:
    for command, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        container = main_container(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True, command
        assert pod["securityContext"].get("runAsUser", 1) != 0, command
        assert pod["terminationGracePeriodSeconds"] == 30, command
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, command
            assert {"requests", "limits"} <= set(c["resources"]), f"{command}: {c['name']} has no resources"
            assert "memory" in c["resources"]["limits"], command
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), command
        if command != "serve":
            assert not {"readinessProbe", "livenessProbe", "ports"} & set(container), f"{command} serves no HTTP"


def test_service_and_disruption_budget_select_exactly_the_api_pods() -> None:
    by_command = deployments()
    api_labels = by_command["serve"]["spec"]["template"]["metadata"]["labels"]
    others = [d["spec"]["template"]["metadata"]["labels"] for c, d in by_command.items() if c != "serve"]

    def selects(selector: dict[str, str]) -> Callable[[dict[str, str]], bool]:
        return lambda labels: selector.items() <= labels.items()

    kinds = {obj["kind"]: obj for _, obj in k8s_objects() if obj["kind"] in ("Service", "PodDisruptionBudget")}
    service, pdb = kinds["Service"], kinds["PodDisruptionBudget"]
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selects(selector)(api_labels) and not any(map(selects(selector), others))
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ("http", API_PORT)
    assert 0 < pdb["spec"]["minAvailable"] < by_command["serve"]["spec"]["replicas"], "drains must be possible"


# -- the probes the files use are open -----------------------------------------------------------


def test_the_files_probe_only_healthz_and_readyz() -> None:
    paths = set(re.findall(r"127\.0\.0\.1:\d+(/\w+)", (DEPLOY / "Dockerfile").read_text()))
    for _, obj in k8s_objects():
        if obj["kind"] == "Deployment":
            container = main_container(obj)
            probes = ("readinessProbe", "livenessProbe", "startupProbe")
            paths |= {container[p]["httpGet"]["path"] for p in probes if p in container}
    assert paths == {LIVENESS, READINESS}
    readme = (DEPLOY / "README.md").read_text()
    assert LIVENESS in readme and READINESS in readme


@pytest.mark.parametrize("path", [LIVENESS, READINESS])
def test_probe_paths_need_no_admin_token(path: str) -> None:
    """Probes send no Authorization header: with LEDGER_ADMIN_TOKEN set they must still pass."""
    import anyio

    from api.auth import AdminTokenMiddleware

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    anyio.run(AdminTokenMiddleware(ok, token="a-long-admin-token-for-the-test"), scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert status == 200, f"GET {path} is behind LEDGER_ADMIN_TOKEN ({status}): the probe would fail"
