"""``crosslogic tls ...``: the control plane's CA (TLS_CA_DIR) at work for operators.

* ``listener-cert --name HOST ...``: the listener's certificate into TLS_CERT_FILE and
  TLS_KEY_FILE (``--keep``: not if both exist, for a container that runs it at every start).
* ``node-cert --name HOST ... --out-dir DIR``: a server certificate for a node registered
  with transport tls or mtls (``node.crt``, ``node.key``), and ``ca.crt`` to require Envoy's
  client certificate with (``crosslogic node --client-ca``).
* ``rotate-node-client``: a new client certificate for Envoy now (every xDS replica pushes
  it within XDS_POLL_INTERVAL; requests in flight are not affected).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
from pathlib import Path

from crosslogic.settings import Settings
from crosslogic.tls import ca, client, issue
from crosslogic.tls.listener import ca_dir

COMMANDS = {"tls"}


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("tls", help="certificates from the control plane's CA").add_subparsers(
        dest="action", required=True
    )
    p = group.add_parser("listener-cert", help="issue the OpenAI listener's certificate")
    p.add_argument("--name", action="append", required=True, help="a host name or IP (repeat)")
    p.add_argument("--keep", action="store_true", help="keep the files if both exist")
    p.set_defaults(handler=_listener_cert)
    p = group.add_parser("node-cert", help="issue a node's server certificate")
    p.add_argument("--name", action="append", required=True, help="a host name or IP (repeat)")
    p.add_argument("--out-dir", required=True, type=Path)
    p.set_defaults(handler=_node_cert)
    p = group.add_parser("rotate-node-client", help="a new client certificate for Envoy")
    p.set_defaults(handler=_rotate)


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return int(args.handler(settings, args))
    except (OSError, ValueError) as exc:
        print(f"crosslogic tls: {exc}", file=sys.stderr)
        return 1


def _listener_cert(settings: Settings, args: argparse.Namespace) -> int:
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None or key is None:
        print("crosslogic tls listener-cert needs TLS_CERT_FILE and TLS_KEY_FILE", file=sys.stderr)
        return 2
    authority = ca.load_or_create(ca_dir(settings))
    if args.keep and cert.exists() and key.exists():
        print(f"kept {cert}")
    else:
        issued = issue.server_certificate(authority, args.name)
        ca.write_atomically(key, issued.key_pem, mode=0o600)
        ca.write_atomically(cert, issued.cert_pem)
        print(f"issued {cert} for {', '.join(args.name)}")
    print(f"SSL_CERT_FILE={authority.cert_file}")
    return 0


def _node_cert(settings: Settings, args: argparse.Namespace) -> int:
    authority = ca.load_or_create(ca_dir(settings))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    issued = issue.server_certificate(authority, args.name)
    ca.write_atomically(args.out_dir / "node.key", issued.key_pem, mode=0o600)
    ca.write_atomically(args.out_dir / "node.crt", issued.cert_pem)
    shutil.copyfile(authority.cert_file, args.out_dir / "ca.crt")
    print(f"issued {args.out_dir / 'node.crt'} for {', '.join(args.name)}")
    return 0


def _rotate(settings: Settings, args: argparse.Namespace) -> int:
    lifetime = datetime.timedelta(seconds=settings.node_client_cert_lifetime)
    issued = client.rotate(ca_dir(settings), lifetime=lifetime)
    print(f"new client certificate {issued.serial:x}, valid until {issued.not_after:%Y-%m-%d}")
    return 0
