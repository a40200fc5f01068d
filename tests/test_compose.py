"""The compose files (docker-compose.yml, one of everything, and docker-compose.scaled.yml,
the scaled-out shape): valid Compose, consistent with the CLI and the settings, and the
Envoy bootstrap each gateway renders is accepted by the real Envoy. No Docker needed;
nothing touches the network. The scaled file's own shape: test_compose_scaled.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from tests.support.compose import (
    ENVOY_IMAGE,
    EXTRA_ENV,
    KNOWN_ENV,
    NODE_ENV,
    REQUIRED,
    Gateway,
    command,
    crosslogic_services,
    depends_on,
    documented_runs,
    environment,
    gateways,
    invocations,
    is_envoy,
    is_node,
    model,
    mounts,
    one_shot_jobs,
    only_invocation,
    parse_invocation,
    published,
    runs_billing,
    settings_of,
    shell_segments,
    variables,
    volume_holding,
)
from tests.support.compose_envoy import (
    LAUNCHER,
    RENDERED_BOOT_ID,
    envoy_binary,
    validate_gateway,
)
from tests.support.dockerfile import APP_DIR, REPO, default_command, dockerfile_env

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.scaled.yml")
ENVOY_MINOR = "1.40"
Services = dict[str, dict[str, Any]]


@pytest.fixture(scope="module", params=COMPOSE_FILES)
def compose_file(request: pytest.FixtureRequest) -> Path:
    return REPO / str(request.param)


@pytest.fixture(scope="module")
def compose(compose_file: Path) -> dict[str, Any]:
    return model(compose_file)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> Services:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def control_plane(services: Services) -> str:
    """The service running ``crosslogic serve``."""
    (name,) = [
        n for n, s in crosslogic_services(services).items() if only_invocation(s)[1] == "serve"
    ]
    return name


def replicas(service: dict[str, Any]) -> int:
    return int((service.get("deploy") or {}).get("replicas", 1))


# --- (1) the Compose Specification --------------------------------------------------------


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_interpolation_has_defaults_for_every_variable(compose_file: Path) -> None:
    """``docker compose up`` works with nothing exported but the secrets it names."""
    for reference, name, op in variables(compose_file.read_text()):
        if op == ":?":
            assert name in REQUIRED, f"{reference} is required but not a known secret"
            continue
        assert op == ":-", f"{reference} has no default (use ${{NAME:-default}})"


# --- (2) what the schema cannot check -----------------------------------------------------


def test_depends_on_targets_exist_and_their_conditions_can_be_met(services: Services) -> None:
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
            dependency = services[target]
            if condition == "service_healthy":
                check = dependency.get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {target} to be healthy, but it has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert dependency.get("restart", "no") == "no", (
                    f"{name} waits for {target} to complete, but {target} is restarted"
                )
            else:
                assert condition == "service_started", condition


def test_envoy_image_is_the_validated_release(services: Services) -> None:
    envoys = [s for s in services.values() if is_envoy(s)]
    assert envoys
    for envoy in envoys:
        image, _, tag = envoy["image"].partition(":")
        assert image == ENVOY_IMAGE
        assert re.fullmatch(rf"v{re.escape(ENVOY_MINOR)}(\.\d+|-latest)", tag), tag
    # the binary the bootstrap is validated with below is the same minor release
    version = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert f"/{ENVOY_MINOR}." in version, version


def test_crosslogic_services_build_this_repository(services: Services, compose_file: Path) -> None:
    images = set()
    for name, service in crosslogic_services(services).items():
        build = service["build"]
        if isinstance(build, str):
            build = {"context": build}
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        assert (compose_file.parent / context).resolve() == REPO, name
        assert (REPO / dockerfile).resolve() == REPO / "Dockerfile"
        images.add(service.get("image"))
    assert len(images) == 1, f"one image for every crosslogic service, not {images}"


def test_environment_names_are_read_by_crosslogic(services: Services) -> None:
    for name, service in crosslogic_services(services).items():
        env = environment(service)
        known = NODE_ENV if is_node(service) else KNOWN_ENV
        unknown = set(env) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which crosslogic does not read"
        if not is_node(service):
            settings_of(service)  # and the values are valid


def test_commands_are_crosslogic_subcommands(services: Services) -> None:
    for name, service in crosslogic_services(services).items():
        found = invocations(service)
        assert found, f"{name} runs no crosslogic command: {command(service)}"
        for argv in found:
            parse_invocation(argv)


def test_long_running_services_restart_and_one_shot_jobs_do_not(services: Services) -> None:
    one_shot = one_shot_jobs(services)
    for name, svc in services.items():
        policy = str(svc.get("restart", "no"))
        if name in one_shot:
            # restarting a finished job would redo it; a failing one would loop forever
            assert policy == "no" or re.fullmatch(r"on-failure:[1-9]\d*", policy), (name, policy)
        else:
            assert policy in ("unless-stopped", "always") or re.fullmatch(
                r"on-failure(:[1-9]\d*)?", policy
            ), f"{name} is long-running but has restart: {policy}"


def test_services_find_postgres_and_redis(services: Services) -> None:
    postgres = environment(services["postgres"])
    redis_servers = {n for n, s in services.items() if command(s)[:1] == ["redis-server"]}
    for name, service in crosslogic_services(services).items():
        role = only_invocation(service)[1]
        if role in ("node", "envoy-config", "tls"):
            continue  # none talks to Postgres or Redis
        s = settings_of(service)
        assert s.db_host == "postgres" and s.db_port == 5432, name
        assert (s.db_user, s.db_password, s.db_name) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            postgres["POSTGRES_DB"],
        )
        if role == "migrate":
            continue
        if s.redis_cluster:
            seeds = {seed.rpartition(":")[0] for seed in s.redis_cluster.split(",")}
            assert seeds <= redis_servers, name
        else:
            assert s.redis_host in redis_servers and s.redis_port == 6379, name


def test_control_plane_is_reachable_and_checked(services: Services) -> None:
    service = services[control_plane(services)]
    s = settings_of(service)
    assert s.server_host == "0.0.0.0", "the services must listen beyond the container"
    for port in published(service):
        assert port.container_port in {s.server_port, s.prometheus_port}
        assert port.address == "127.0.0.1", "the admin API and metrics stay on loopback"
        # each replica takes a host port of its own
        assert len(port.host_ports) >= replicas(service), port
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "<healthcheck>", "exec")
    assert f"http://localhost:{s.server_port}/ready" in test[3]


def test_every_billing_consumer_belongs_to_one_gateway(services: Services) -> None:
    found = gateways(services)
    billing = {n for n, s in crosslogic_services(services).items() if runs_billing(s)}
    assert billing == {g.billing for g in found}
    ids = [settings_of(services[g.config]).gateway_id for g in found]
    assert len(ids) == len(set(ids)), f"GATEWAY_ID must be unique: {ids}"


def test_envoy_config_targets_the_control_plane(services: Services) -> None:
    name = control_plane(services)
    served = settings_of(services[name])
    assert len(served.xds_ports) >= 2, "Envoy keeps its updates when one xDS process dies"
    for gateway in gateways(services):
        s = settings_of(services[gateway.config])
        assert s.extauthz_host == s.ratelimit_host == s.xds_host == name
        assert (s.extauthz_port, s.ratelimit_port, s.xds_ports, s.server_port) == (
            served.extauthz_port,
            served.ratelimit_port,
            served.xds_ports,
            served.server_port,
        )
        args = parse_invocation(only_invocation(services[gateway.config]))
        assert args.control_plane_host == name
        assert args.listen_address == args.admin_address == "0.0.0.0"
        envoy = published(services[gateway.envoy])
        assert {p.container_port for p in envoy} == {s.envoy_port, s.envoy_admin_port}
        admin = [p.address for p in envoy if p.container_port == s.envoy_admin_port]
        assert admin == ["127.0.0.1"], "Envoy's admin must stay on loopback"
        # billing asks it which Envoy process is live (the usage journal), over the network
        billing = settings_of(services[gateway.billing])
        assert (billing.envoy_admin_host, billing.envoy_admin_port) == (
            gateway.envoy,
            s.envoy_admin_port,
        )


def test_envoy_and_its_billing_share_files(services: Services) -> None:
    for gateway in gateways(services):
        cfg, envoy = services[gateway.config], services[gateway.envoy]
        billing = services[gateway.billing]
        args = parse_invocation(only_invocation(cfg))
        envoy_argv = command(envoy)
        # the launcher gives every Envoy process a boot id of its own, in place of the one
        # rendered
        assert envoy_argv[:2] == ["sh", LAUNCHER] and envoy_argv[2] == args.output
        assert args.boot_id == RENDERED_BOOT_ID
        for option in ("--file-flush-interval-msec", "--disable-hot-restart"):
            assert option in envoy_argv  # as `crosslogic up` runs it
        # the bootstrap, the Lua filter and the launcher: written by envoy-config, read by Envoy
        for path in (args.output, args.lua_path, LAUNCHER):
            assert volume_holding(cfg, path) == volume_holding(envoy, path), path
        (copy,) = [seg for seg in shell_segments(command(cfg)) if seg[0] == "cp"]
        target = PurePosixPath(copy[-1])
        copied = {str(target / PurePosixPath(source).name) for source in copy[1:-1]}
        assert copied == {args.lua_path, LAUNCHER}
        for source in copy[1:-1]:
            path = PurePosixPath(source)
            assert (REPO / path.relative_to(APP_DIR)).is_file(), f"the image has no {source}"
        # the access log: written by Envoy, read by billing, under the same gateway id
        rendered, consumed = settings_of(cfg), settings_of(billing)
        assert rendered.gateway_id == consumed.gateway_id, gateway
        log = str(rendered.access_log)
        assert log == str(consumed.access_log) and PurePosixPath(log).is_absolute()
        volume = volume_holding(envoy, log)
        assert volume == volume_holding(billing, log) == volume_holding(cfg, log)


def test_a_gateways_volumes_are_its_own(services: Services) -> None:
    for gateway in gateways(services):
        ours = {gateway.envoy, gateway.config, gateway.billing}
        cfg = services[gateway.config]
        log = str(settings_of(cfg).access_log)
        args = parse_invocation(only_invocation(cfg))
        held = {volume_holding(cfg, log)[0], volume_holding(cfg, args.output)[0]}
        for name, service in services.items():
            shared = held & set(mounts(service).values())
            assert name in ours or not shared, f"{name} mounts {shared} of {gateway}"


def test_redis_keeps_its_data_across_a_restart(services: Services) -> None:
    # counters and the usage journal survive a restarted container
    servers = [s for s in services.values() if command(s)[:1] == ["redis-server"]]
    assert servers
    for redis in servers:
        argv = command(redis)
        assert argv[argv.index("--appendonly") + 1] == "yes"
        assert "/data" in mounts(redis)


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source} at {target}"


def test_nodes_register_where_envoy_can_reach_them(services: Services) -> None:
    served = settings_of(services[control_plane(services)])
    node_ids = []
    for name, service in crosslogic_services(services).items():
        if not is_node(service):
            continue
        args = parse_invocation(only_invocation(service))
        assert args.host == "0.0.0.0" and args.port > 0
        assert args.advertise_address == service.get("hostname", name)
        url = re.fullmatch(r"http://([^:/]+):(\d+)/?", args.control_plane)
        assert url, args.control_plane
        assert url[1] == control_plane(services) and int(url[2]) == served.server_port
        assert "control-plane" in depends_on(service)
        test = service["healthcheck"]["test"]
        compile(test[3], "<healthcheck>", "exec")
        assert f"http://localhost:{args.port}/health" in test[3]
        node_ids.append(args.node_id)
    assert len(node_ids) == 2 and len(set(node_ids)) == 2, node_ids


def test_nodes_get_the_registration_token_and_never_the_admin_token(services: Services) -> None:
    served = environment(services[control_plane(services)])
    nodes = [environment(s) for s in crosslogic_services(services).values() if is_node(s)]
    assert len(nodes) == 2
    for env in nodes:
        assert "ADMIN_TOKEN" not in env
        assert env["NODE_REGISTRATION_TOKEN"] == served["NODE_REGISTRATION_TOKEN"]
    assert served["NODE_REGISTRATION_TOKEN"] != served["ADMIN_TOKEN"]


def test_documented_demo_seeds_the_model_the_nodes_serve(
    services: Services, compose_file: Path
) -> None:
    runs = documented_runs(compose_file)
    assert [argv[1] for _, argv in runs] == ["demo"]
    service, argv = runs[0]
    assert service in crosslogic_services(services)
    demo = parse_invocation(argv)
    for node in crosslogic_services(services).values():
        if is_node(node):
            assert parse_invocation(only_invocation(node)).model == demo.model
    port = urlsplit(demo.base_url).port
    gateway_ports = {
        host
        for gateway in gateways(services)
        for p in published(services[gateway.envoy])
        if p.container_port == settings_of(services[gateway.config]).envoy_port
        for host in p.host_ports
    }
    assert port in gateway_ports


def test_published_host_ports_are_distinct(services: Services) -> None:
    host_ports = [port for s in services.values() for p in published(s) for port in p.host_ports]
    assert len(host_ports) == len(set(host_ports)), host_ports


# --- (3) the rendered bootstraps, validated by Envoy ----------------------------------------


def test_envoy_accepts_every_gateways_bootstrap(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVOY_TEMPLATE_DIR", str(REPO / "envoy"))  # the image's /app/envoy
    found = gateways(services)
    assert found
    for gateway in found:
        folder = tmp_path / gateway.envoy
        folder.mkdir()
        validate_gateway(services, gateway, folder)


# --- the Dockerfile, and docker-compose.yml's own shape --------------------------------------


def test_dockerfile_points_the_renderer_at_the_copied_templates() -> None:
    env = dockerfile_env()
    template_dir = PurePosixPath(env["ENVOY_TEMPLATE_DIR"])
    assert template_dir.is_relative_to(APP_DIR)
    assert (REPO / template_dir.relative_to(APP_DIR) / "envoy.yaml").is_file()
    assert PurePosixPath(env["DATA_DIR"]).is_absolute(), "the image's workdir is not writable"
    ours = {name for name in env if not name.startswith(("PYTHON", "PIP_"))}
    assert ours <= KNOWN_ENV, f"the Dockerfile sets unknown {sorted(ours - KNOWN_ENV)}"
    assert default_command() == ["crosslogic", "serve"]
    parse_invocation(default_command())


def test_extra_environment_names_are_read_by_crosslogic() -> None:
    sources = "\n".join(p.read_text() for p in (REPO / "crosslogic").rglob("*.py"))
    for name in set(EXTRA_ENV) - {"PYTHONUNBUFFERED"}:
        assert f'"{name}"' in sources, f"nothing in crosslogic reads {name} any more"


@pytest.fixture(scope="module")
def plain() -> Services:
    found = model(REPO / "docker-compose.yml")["services"]
    assert isinstance(found, dict)
    return found


def test_plain_file_runs_one_of_everything(plain: Services) -> None:
    monitoring = {"prometheus", "grafana"}  # their own shape: test_compose_monitoring.py
    assert set(plain) == {"postgres", "redis", "envoy", *monitoring, *crosslogic_services(plain)}
    assert plain["postgres"]["image"] == "postgres:16"
    assert plain["redis"]["image"] == "redis:7"
    roles = {name: only_invocation(svc)[1] for name, svc in crosslogic_services(plain).items()}
    assert roles == {
        "migrate": "migrate",
        "control-plane": "serve",
        "envoy-config": "envoy-config",
        "certificates": "tls",
        "node-1": "node",
        "node-2": "node",
    }
    assert gateways(plain) == [Gateway("envoy", "envoy-config", "control-plane")]
    assert one_shot_jobs(plain) == {"migrate", "envoy-config", "certificates"}
    assert depends_on(plain["migrate"]) == {"postgres": "service_healthy"}
    assert depends_on(plain["control-plane"]) == {
        "migrate": "service_completed_successfully",
        "redis": "service_healthy",
    }
    assert depends_on(plain["envoy"]) == {
        "envoy-config": "service_completed_successfully",
        "control-plane": "service_healthy",
    }
