"""``ctpl-cloud``: run a request worker, make a development PKI, import vehicles and policies,
roll the message-signing key."""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .config import CloudConfig
from .errors import CloudError
from .logs import configure as configure_logs
from .pki import DevPki, issue_cloud_identity, write_dev_pki


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctpl-cloud",
        description="CTPL cloud endpoint: signed policy-state request worker and tools.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run a request worker against the broker")
    s.add_argument(
        "--db", type=_store_target, required=True,
        help="the store: a SQLite file, or a postgresql:// URL (several workers can share it)",
    )  # fmt: skip
    s.add_argument("--broker-host", default="127.0.0.1")
    s.add_argument("--broker-port", type=int, default=8883)
    s.add_argument("--pki", type=Path, help="a dev PKI directory (sets the key files below)")
    s.add_argument("--ca", type=Path, help="CA certificate the broker's certificate chains to")
    s.add_argument(
        "--cert", type=Path,
        help="this worker's client certificate (its CN is the client id the broker takes: "
        "ctpl-cloud-<name>); with --pki and none given, the PKI issues one for --client-id",
    )  # fmt: skip
    s.add_argument("--key", type=Path, help="the cloud's client key")
    s.add_argument("--signing-key", type=Path, help="the cloud's message-signing key")
    s.add_argument(
        "--signing-keys",
        type=Path,
        help="the signing-key ring (used when it exists; else --signing-key)",
    )
    s.add_argument("--http-host", default="127.0.0.1", help="the HTTPS API's address")
    s.add_argument("--http-port", type=int, help="serve the HTTPS API (enrollment) on this port")
    s.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the API's admin token (else $CTPL_ADMIN_TOKEN; else no admin)",
    )
    s.add_argument(
        "--metrics-token-file",
        type=Path,
        help="file holding the bearer token for GET /metrics (else $CTPL_METRICS_TOKEN; "
        "else /metrics is refused)",
    )
    s.add_argument(
        "--data-key-file", type=Path,
        help="the key personal data is sealed with in the store (else $CTPL_DATA_KEY; else, "
        "for a SQLite store, <db>.key beside it)",
    )  # fmt: skip
    s.add_argument("--ca-key", type=Path, help="the device CA's key, to issue car certificates")
    s.add_argument("--root-key", type=Path, help="the root key that signs key sets")
    s.add_argument("--api-cert", type=Path, help="the HTTPS API's server certificate")
    s.add_argument("--api-key", type=Path, help="the HTTPS API's server key")
    s.add_argument("--crl", type=Path, help="the broker's CRL file, rewritten on revocation")
    s.add_argument("--broker-pid-file", type=Path, help="the broker's pid_file, for SIGHUP")
    s.add_argument("--client-id", default="ctpl-cloud-1", help="MQTT client id (one per worker)")
    s.add_argument(
        "--fresh-for",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="how long a state stays fresh on the car (default 1 day)",
    )
    s.add_argument(
        "--sources",
        type=Path,
        metavar="JSON",
        help='policy sources: {"national_url": …, "insurers": [{"code", "name", "url", '
        '"webhook_secret"}]} (docs/sources.md); none: no renewal in the cloud',
    )
    s.add_argument(
        "--fleet-webhooks",
        type=Path,
        metavar="JSON",
        help='where fleets\' alerts are posted: [{"fleet_id", "url", "secret"}] '
        "(docs/alerts.md); none: alerts show on the API and the dashboard only",
    )
    s.add_argument("-v", "--verbose", action="store_true")
    s.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="log lines as JSON objects (default) or text; both scrubbed of VINs, plates "
        "and policy numbers (docs/operations.md)",
    )

    k = sub.add_parser("dev-pki", help="make a development CA, broker/cloud certs and car certs")
    k.add_argument("--out", type=Path, required=True, help="directory to write into")
    k.add_argument("--cars", type=int, default=20, help="how many car identities (default 20)")
    k.add_argument(
        "--cloud-workers", type=int, default=1,
        help="how many cloud worker identities, ctpl-cloud-1…N (default 1)",
    )  # fmt: skip

    r = sub.add_parser(
        "roll-signing-key",
        help="make a new message-signing key; the current one verifies until a cut-off",
        description="Add a new P-256 signing key to the ring, give the key in service a "
        "cut-off of now + the overlap, drop keys past their cut-off, and bump the key-set "
        "version. A running `ctpl-cloud serve` uses the new ring when restarted.",
    )
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--pki", type=Path, help="a dev PKI directory (its signing-keys.json)")
    where.add_argument("--keys", type=Path, help="the signing-key ring file")
    r.add_argument(
        "--signing-key",
        type=Path,
        help="with --keys and no ring yet: the key in service, to start the ring from",
    )
    r.add_argument(
        "--overlap-days",
        type=float,
        default=7.0,
        help="how long the old key still verifies (default 7)",
    )

    i = sub.add_parser("import", help="register vehicles and seed policies in the store")
    i.add_argument(
        "--db", type=_store_target, required=True, help="SQLite file or postgresql:// URL"
    )
    i.add_argument("--vehicles", type=Path, help="vehicles.json written by dev-pki")
    i.add_argument("--policies", type=Path, help="policies.json (list of policy records)")
    i.add_argument(
        "--policies-by-vin", type=Path, help="policies a vehicle gets when it enrolls with a VIN"
    )
    i.add_argument(
        "--data-key-file", type=Path,
        help="the store's data key (else $CTPL_DATA_KEY; else, for SQLite, <db>.key beside it)",
    )  # fmt: skip
    return p


def _admin_token(a: argparse.Namespace, environ: dict[str, str]) -> str | None:
    return _token(a.admin_token_file, environ, "CTPL_ADMIN_TOKEN")


def _token(path: Path | None, environ: dict[str, str], variable: str) -> str | None:
    """A secret from ``path`` if given, else from ``$variable``; None if empty."""
    if path is not None:
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise SystemExit(f"ctpl-cloud serve: cannot read {path}: {exc}") from exc
    return environ.get(variable) or None


def _serve_config(a: argparse.Namespace, environ: dict[str, str] | None = None) -> CloudConfig:
    files = {
        "ca_file": a.ca,
        "cert_file": a.cert,
        "key_file": a.key,
        "signing_key_file": a.signing_key,
    }
    ring = a.signing_keys
    api_files = {
        "ca_key_file": a.ca_key,
        "root_key_file": a.root_key,
        "api_cert_file": a.api_cert,
        "api_key_file": a.api_key,
    }
    client_id = a.client_id
    if a.pki is not None:
        pki = DevPki(a.pki)
        # A worker's own identity: the broker takes a client id only equal to the CN.
        me = issue_cloud_identity(pki, client_id) if a.cert is None else None
        if me is not None:
            client_id = me.cn
        defaults = {
            "ca_file": pki.ca_cert,
            "cert_file": pki.cloud_cert if me is None else me.cert,
            "key_file": pki.cloud_key if me is None else me.key,
            "signing_key_file": pki.signing_key,
            "ca_key_file": pki.ca_key,
            "root_key_file": pki.root_key,
            "api_cert_file": pki.api_cert,
            "api_key_file": pki.api_key,
        }
        files = {k: v or defaults[k] for k, v in files.items()}
        api_files = {k: v or defaults[k] for k, v in api_files.items()}
        ring = ring or pki.signing_keys
    if ring is not None and files["signing_key_file"] is None:
        del files["signing_key_file"]
    missing = [k for k, v in files.items() if v is None]
    if a.http_port is not None:
        missing += [k for k, v in api_files.items() if v is None]
    if missing:
        raise SystemExit(
            f"ctpl-cloud serve: give --pki or all of --ca --cert --key --signing-key(s) "
            f"(and with --http-port: --ca-key --root-key --api-cert --api-key) "
            f"(missing {', '.join(missing)})"
        )
    env = dict(os.environ) if environ is None else environ
    return CloudConfig.model_validate(
        {
            **files,
            **api_files,
            "signing_keys_file": ring,
            "db_path": a.db if isinstance(a.db, Path) else Path("unused.db"),
            "db_url": None if isinstance(a.db, Path) else a.db,
            "broker_host": a.broker_host,
            "broker_port": a.broker_port,
            "client_id": client_id,
            "fresh_for_s": a.fresh_for,
            "http_host": a.http_host,
            "http_port": a.http_port,
            "crl_file": a.crl or (DevPki(a.pki).crl if a.pki is not None else None),
            "broker_pid_file": a.broker_pid_file,
            "admin_token": _admin_token(a, env),
            "metrics_token": _token(a.metrics_token_file, env, "CTPL_METRICS_TOKEN"),
            "data_key_file": a.data_key_file,
            **_sources(a.sources),
            "fleet_webhooks": _fleet_webhooks(a.fleet_webhooks),
        }
    )


def _fleet_webhooks(path: Path | None) -> tuple[object, ...]:
    """The fleets' alert webhooks from a file (it holds their secrets)."""
    if path is None:
        return ()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"ctpl-cloud serve: --fleet-webhooks {path}: {exc}") from exc
    if not isinstance(data, list):
        raise SystemExit(f"ctpl-cloud serve: --fleet-webhooks {path}: expected a JSON list")
    return tuple(data)


def _store_target(text: str) -> Path | str:
    """A ``--db`` value: a PostgreSQL URL as given, anything else a SQLite file path."""
    return text if text.startswith(("postgresql://", "postgres://")) else Path(text)


def _sources(path: Path | None) -> dict[str, object]:
    """``national_url`` and ``insurers`` from a sources file (it holds webhook secrets)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"ctpl-cloud serve: --sources {path}: {exc}") from exc
    if not isinstance(data, dict) or not set(data) <= {"national_url", "insurers"}:
        raise SystemExit(f"ctpl-cloud serve: --sources {path}: expected national_url, insurers")
    return {"national_url": data.get("national_url"), "insurers": tuple(data.get("insurers", ()))}


async def _import(a: argparse.Namespace) -> None:
    from .db import where_of
    from .fleet_file import import_files
    from .store import Store

    store = await Store.open(a.db, a.data_key_file)
    async with store:
        nv, np = await import_files(store, a.vehicles, a.policies, a.policies_by_vin)
    where = a.db if isinstance(a.db, Path) else where_of(a.db)  # never a password
    print(f"imported {nv} vehicles and {np} policies into {where}")


def _roll(a: argparse.Namespace, now: datetime) -> None:
    from .signing_keys import describe, roll_file

    if a.overlap_days < 0:
        raise SystemExit("ctpl-cloud roll-signing-key: --overlap-days cannot be negative")
    if a.pki is not None:
        pki = DevPki(a.pki)
        ring, first = pki.signing_keys, a.signing_key or pki.signing_key
    else:
        ring, first = a.keys, a.signing_key
    rolled = roll_file(ring, now, timedelta(days=a.overlap_days), first_key_file=first)
    print(f"rolled the signing-key ring {ring}")
    for line in describe(rolled):
        print(f"  {line}")


def main(argv: list[str] | None = None, *, now: datetime | None = None) -> int:
    """Entry point of ``ctpl-cloud``; returns the exit code. ``now``: for tests of a roll."""
    a = _parser().parse_args(argv)
    configure_logs(
        getattr(a, "log_format", "text"),
        logging.DEBUG if getattr(a, "verbose", False) else logging.INFO,
    )
    try:
        if a.command == "dev-pki":
            pki = write_dev_pki(a.out, a.cars, cloud_workers=a.cloud_workers)
            print(
                f"wrote a dev PKI with {a.cars} cars and {a.cloud_workers} cloud worker "
                f"identities to {pki.root}"
            )
        elif a.command == "import":
            asyncio.run(_import(a))
        elif a.command == "roll-signing-key":
            _roll(a, now or datetime.now(UTC))
        else:
            from .worker import Worker

            worker = Worker(_serve_config(a))
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(worker.run())
    except CloudError as exc:
        print(f"ctpl-cloud: {exc}", file=sys.stderr)
        return 1
    return 0
