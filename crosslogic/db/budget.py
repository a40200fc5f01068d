"""The PostgreSQL connection budget: the most connections each service's processes hold, for
given settings, computed without a database (``crosslogic db-connections`` prints it).

Every process holds a pool, at most its ``*_DB_POOL`` setting, and dedicated connections
(each LISTEN needs a connection of its own: a pooled one would be handed to other work).
Each holder names its connections (``application_name``), so pg_stat_activity on a running
system can be compared with this budget name by name. With ``DB_READ_HOST`` the admin
process holds a second pool on the replica, counted against the replica.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from crosslogic.services import SERVICES
from crosslogic.settings import Settings

PREFIX = "crosslogic"
# A command line's one connection (migrate, operator commands, billing reports): not part
# of any service's budget, one more per command running.
COMMAND = f"{PREFIX}-cli"
PRIMARY, REPLICA = "primary", "replica"


def application_name(service: str, role: str = "") -> str:
    """``crosslogic-<service>`` (its pool) or ``crosslogic-<service>-<role>``."""
    return f"{PREFIX}-{service}-{role}" if role else f"{PREFIX}-{service}"


def listen_name(holder: str) -> str:
    """The name of the dedicated LISTEN connection beside the pool named ``holder``."""
    return f"{holder}-listen"


@dataclass(frozen=True)
class Holder:
    """What one process holds under one ``application_name``: a pool of at most ``size``
    connections, or ``size`` dedicated ones, on the primary or the replica."""

    application_name: str
    size: int
    dedicated: bool = False
    server: str = PRIMARY


@dataclass(frozen=True)
class ServiceBudget:
    """One service: ``processes`` copies, each holding ``holders``."""

    service: str
    processes: int
    holders: tuple[Holder, ...]

    def _sum(self, server: str, *, dedicated: bool) -> int:
        return sum(h.size for h in self.holders if h.server == server and h.dedicated == dedicated)

    def pool(self, server: str = PRIMARY) -> int:
        """Pool connections of one process."""
        return self._sum(server, dedicated=False)

    def dedicated(self, server: str = PRIMARY) -> int:
        """Dedicated connections of one process."""
        return self._sum(server, dedicated=True)

    def total(self, server: str = PRIMARY) -> int:
        return self.processes * (self.pool(server) + self.dedicated(server))

    def on(self, server: str) -> bool:
        return any(h.server == server for h in self.holders)


@dataclass(frozen=True)
class Budget:
    """Every service's budget; the totals are what the servers' max_connections must hold."""

    services: tuple[ServiceBudget, ...]

    def total(self, server: str = PRIMARY) -> int:
        return sum(s.total(server) for s in self.services)

    def servers(self) -> tuple[str, ...]:
        return tuple(x for x in (PRIMARY, REPLICA) if any(s.on(x) for s in self.services))

    def limits(self) -> dict[tuple[str, str], int]:
        """(server, application_name) -> the most connections under that name, all
        processes together."""
        most: Counter[tuple[str, str]] = Counter()
        for s in self.services:
            for h in s.holders:
                most[(h.server, h.application_name)] += s.processes * h.size
        return dict(most)


def limiter_holders(holder: str, settings: Settings) -> tuple[Holder, ...]:
    """A rate limiter's: its pool (the limit table) and the LISTEN for limit changes."""
    return (
        Holder(holder, settings.ratelimit_db_pool),
        Holder(listen_name(holder), 1, dedicated=True),
    )


def _holders(service: str, settings: Settings) -> tuple[Holder, ...]:
    pooled = {
        "admin": settings.admin_db_pool,
        "xds": settings.xds_db_pool,
        "extauthz": settings.extauthz_db_pool,
        "ratelimit": settings.ratelimit_db_pool,
        "billing": settings.billing_db_pool,
        "orchestrator": 3,  # crosslogic.orchestrator.main's pool, its leader's connection in it
    }
    name = application_name(service)
    if service == "admin":  # no LISTEN: it only NOTIFYs, on its pool's connections
        read = (
            (Holder(application_name(service, "read"), settings.admin_db_pool, server=REPLICA),)
            if settings.db_read_host is not None
            else ()
        )
        return (Holder(name, pooled[service]), *read)
    if service == "ratelimit":
        return limiter_holders(name, settings)
    if service == "orchestrator":  # no LISTEN
        return (Holder(name, pooled[service]),)
    held = (Holder(name, pooled[service]), Holder(listen_name(name), 1, dedicated=True))
    if service == "extauthz" and settings.ratelimit_at == "authz":
        # ext_authz then runs the rate limiter itself, with the limiter's own connections
        return held + limiter_holders(application_name(service, "limits"), settings)
    return held


def budget(settings: Settings, *, without: Iterable[str] = ()) -> Budget:
    """What `crosslogic serve [--without NAME]` holds with ``settings``: every service but
    those ``without``, each in as many processes as the settings give it."""
    skipped = set(without)
    return Budget(
        tuple(
            ServiceBudget(s.name, s.processes(settings), _holders(s.name, settings))
            for s in SERVICES
            if s.name not in skipped
        )
    )


def _rows(services: Iterable[ServiceBudget], server: str) -> list[tuple[str, ...]]:
    return [
        (
            s.service,
            str(s.processes),
            str(s.pool(server)),
            str(s.dedicated(server)),
            str(s.total(server)),
            ", ".join(h.application_name for h in s.holders if h.server == server),
        )
        for s in services
        if s.on(server)
    ]


def render(found: Budget, settings: Settings) -> str:
    """The budget as the table ``crosslogic db-connections`` prints."""
    head = ("service", "processes", "pool", "dedicated", "total", "application_name")
    lines = []
    for server in found.servers():
        where = (
            f"DB_READ_HOST={settings.db_read_host}:{settings.db_read_port}"
            if server == REPLICA
            else f"DB_HOST={settings.db_host or '(embedded)'}:{settings.db_port}"
        )
        rows = [head, *_rows(found.services, server)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
        lines.append(f"{server} ({where}): at most {found.total(server)} connections")
        for row in rows:
            cells = [
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=False))
            ]
            lines.append("  ".join([*cells, row[-1]]))
        lines.append("")
    lines += [
        "pool: a process's pool at its most (*_DB_POOL); dedicated: its LISTEN connections;",
        "total: processes x (pool + dedicated). Each `crosslogic` command running (migrate,",
        f"operator commands) opens one more ({COMMAND}); PostgreSQL's max_connections must",
        "hold the total and its superuser_reserved_connections.",
    ]
    return "\n".join(lines)
