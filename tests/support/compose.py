"""Reading a compose file the way Compose does, without Docker: variable interpolation, the
services' commands, environments, volumes and ports, and the gateways (an Envoy, its config
job and its billing consumer) a file describes. Used by test_compose*.py.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from crosslogic import cli
from crosslogic.node import main as node_main
from crosslogic.settings import Settings, SettingsError, load, to_env
from tests.support.dockerfile import default_command

ENVOY_IMAGE = "envoyproxy/envoy"

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


def variables(text: str) -> Iterator[tuple[str, str | None, str | None]]:
    """(whole reference, variable name, operator) of every ``$`` reference outside comments;
    ``$$`` is left out, a reference this module cannot parse has no name."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for match in _VARIABLE.finditer(body):
        if match["escaped"]:
            continue
        expr = _BRACED.match(match["braced"] or "")
        yield match[0], expr["name"] if expr else None, expr["op"] if expr else None


def model(path: Path) -> dict[str, Any]:
    """The model Compose builds from ``path`` with only the secrets set: every default applies."""
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    result = interpolate(document, REQUIRED)
    assert isinstance(result, dict)
    return result


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


def is_node(service: Mapping[str, Any]) -> bool:
    return any(argv[1:2] == ["node"] for argv in invocations(service))


def runs_billing(service: Mapping[str, Any]) -> bool:
    """Whether the service runs a billing consumer (``serve`` without ``--without billing``,
    or ``service billing``)."""
    for argv in invocations(service):
        args = parse_invocation(argv)
        if argv[1] == "serve" and "billing" not in args.without:
            return True
        if argv[1] == "service" and args.name == "billing":
            return True
    return False


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def one_shot_jobs(services: Mapping[str, dict[str, Any]]) -> set[str]:
    """The services another one waits to complete: everything else serves."""
    return {
        target
        for svc in services.values()
        for target, condition in depends_on(svc).items()
        if condition == "service_completed_successfully"
    }


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


@dataclass(frozen=True)
class Published:
    """A published port (short syntax): ``host_ports`` is one port or a range of them, one
    taken by each replica."""

    address: str  # empty: every address of the host
    host_ports: range
    container_port: int


def published(service: Mapping[str, Any]) -> list[Published]:
    found = []
    for port in service.get("ports") or []:
        *host, container = str(port).split(":")
        address = host[0] if len(host) == 2 else ""
        first, _, last = (host[-1] if host else "").partition("-")
        ports = range(int(first), int(last or first) + 1) if first else range(0)
        found.append(Published(address, ports, int(container.split("/")[0])))
    return found


def settings_of(service: Mapping[str, Any]) -> Settings:
    try:
        return load(environment(service))
    except SettingsError as exc:
        pytest.fail(f"the service's environment is not valid configuration: {exc}")


def documented_runs(path: Path) -> list[tuple[str, list[str]]]:
    """(service, crosslogic argv) of the ``docker compose [-f FILE] run`` lines in the
    file's comments."""
    found = []
    for line in path.read_text().splitlines():
        text = line.lstrip("# ") if line.lstrip().startswith("#") else ""
        words = shlex.split(text) if text.startswith("docker compose ") else []
        if "run" in words and "crosslogic" in words:
            at = words.index("crosslogic")
            found.append((words[at - 1], words[at:]))
    return found


def is_envoy(service: Mapping[str, Any]) -> bool:
    return str(service.get("image", "")).partition(":")[0] == ENVOY_IMAGE


@dataclass(frozen=True)
class Gateway:
    """One gateway of a compose file, by service name: an Envoy, the job rendering its
    bootstrap, and the service consuming its access log (whose ENVOY_ADMIN_HOST it is)."""

    envoy: str
    config: str
    billing: str


def gateways(services: Mapping[str, dict[str, Any]]) -> list[Gateway]:
    found = []
    for name, envoy in services.items():
        if not is_envoy(envoy):
            continue
        configs = [
            dep
            for dep in depends_on(envoy)
            if any(argv[1] == "envoy-config" for argv in invocations(services[dep]))
        ]
        assert len(configs) == 1, f"{name} waits for one envoy-config job, not {configs}"
        billing = [
            other
            for other, svc in crosslogic_services(services).items()
            if runs_billing(svc) and environment(svc).get("ENVOY_ADMIN_HOST") == name
        ]
        assert len(billing) == 1, f"one billing consumer asks {name}'s admin, not {billing}"
        found.append(Gateway(name, configs[0], billing[0]))
    return found
