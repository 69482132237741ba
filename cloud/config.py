"""The cloud worker's configuration: one frozen model, built once and passed down."""

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from .pki import CLOUD_IDENTITY, DevPki, issue_cloud_identity


class InsurerSource(BaseModel):
    """One insurer's API and the secret its webhooks are signed with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(min_length=1, max_length=16, pattern=r"^[A-Z0-9]+$")
    name: str = Field(min_length=1, max_length=64)
    url: str = Field(pattern=r"^https?://")
    webhook_secret: SecretStr


class FleetWebhook(BaseModel):
    """Where a fleet's alerts are delivered (HMAC-signed with ``secret``; docs/alerts.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fleet_id: str = Field(pattern=r"^f[0-9a-z]{7,39}$")
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr


class CloudConfig(BaseModel):
    """Everything a cloud process needs; paths are read when the process starts, not here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker_host: str = "127.0.0.1"
    broker_port: int = Field(8883, ge=1, le=65535)
    ca_file: Path
    """The device CA's certificate: the broker's and the cars' certificates chain to it."""
    cert_file: Path
    key_file: Path
    signing_key_file: Path | None = None
    """One message-signing key: a ring of one, key-set version 1."""
    signing_keys_file: Path | None = None
    """The signing-key ring (``cloud.signing_keys``); used when it exists, else signing_key_file."""
    db_path: Path
    client_id: str = "ctpl-cloud-1"
    fresh_for_s: float = Field(86400.0, gt=0)
    expiring_within_days: int = Field(30, ge=0)
    keepalive_s: int = Field(30, ge=5, le=300)

    http_host: str = "127.0.0.1"
    http_port: int | None = Field(None, ge=1, le=65535)
    """The HTTPS API's port; None runs no API."""
    admin_token: SecretStr | None = None
    """The admin's bearer token; None refuses every admin request."""
    root_key_file: Path | None = None
    """The root key that signs key sets (offline in production)."""
    ca_key_file: Path | None = None
    """The device CA's private key, to issue car certificates."""
    api_cert_file: Path | None = None
    api_key_file: Path | None = None
    cert_days: int = Field(90, ge=1, le=825)
    crl_file: Path | None = None
    """The CRL the broker reads (its ``crlfile``): rewritten on revocation and daily."""
    broker_pid_file: Path | None = None
    """The broker's ``pid_file``: SIGHUP goes there after the CRL is rewritten."""
    """Validity of an issued car certificate."""
    gateway_broker_host: str | None = None
    """The broker host told to enrolling gateways; None tells them ``broker_host``."""
    gateway_broker_port: int | None = Field(None, ge=1, le=65535)
    """The broker port told to enrolling gateways; None tells them ``broker_port``."""
    national_url: str | None = Field(None, pattern=r"^https?://")
    """The national platform's policy look-up API (authoritative); None: not asked."""
    insurers: tuple[InsurerSource, ...] = ()
    """The insurers to quote, bind and look up with; none: no renewal in the cloud."""
    db_url: str | None = Field(None, pattern=r"^postgres(ql)?://")
    """A PostgreSQL store at this URL instead of the SQLite file ``db_path``."""
    fleet_webhooks: tuple[FleetWebhook, ...] = ()
    """Per fleet, the URL its alerts are posted to."""
    alert_interval_s: float = Field(5.0, gt=0)
    """How often the fleet monitor evaluates alerts and delivers due webhooks."""
    allow_loopback_webhooks: bool = False
    """Development only: fleet alert webhooks may target this host's loopback (plain http
    too). Every other private, link-local or reserved address stays refused (cloud.outbound)."""
    metrics_token: SecretStr | None = None
    """The bearer token Prometheus sends for ``GET /metrics``; None refuses every scrape
    (docs/operations.md)."""
    data_key_file: Path | None = None
    """The key VINs, plates and webhook secrets are sealed with in the store
    (``cloud.sealing``); ``$CTPL_DATA_KEY`` comes first. None: a SQLite store uses
    ``<db>.key`` beside it; a PostgreSQL store needs one of the two."""

    @model_validator(mode="after")
    def _api_files_when_serving(self) -> Self:
        if self.signing_key_file is None and self.signing_keys_file is None:
            raise ValueError("give signing_key_file or signing_keys_file")
        if self.http_port is not None:
            names = ("root_key_file", "ca_key_file", "api_cert_file", "api_key_file")
            missing = [n for n in names if getattr(self, n) is None]
            if missing:
                raise ValueError(f"http_port needs {', '.join(missing)}")
        return self

    @property
    def store_target(self) -> Path | str:
        """What ``Store.open`` opens: the PostgreSQL URL if given, else the SQLite file."""
        return self.db_url or self.db_path

    @property
    def advertised_broker(self) -> tuple[str, int]:
        """The broker (host, port) that enrolled gateways are told to connect to."""
        return (
            self.gateway_broker_host or self.broker_host,
            self.gateway_broker_port or self.broker_port,
        )

    @classmethod
    def from_pki(
        cls, pki: DevPki, *, db_path: Path, broker_port: int, **kw: object
    ) -> "CloudConfig":
        """A config that uses the files of a development PKI.

        ``client_id`` names the worker: unless ``cert_file`` is given, the worker gets the
        PKI's identity of that name (``cloud.pki.cloud_cn``: ``ctpl-cloud-<name>`` unless the
        name already is one; issued the first time), and its client id is that CN, as the
        broker requires.
        """
        if "cert_file" not in kw:
            identity = issue_cloud_identity(pki, str(kw.get("client_id", CLOUD_IDENTITY)))
            kw = {**kw, "cert_file": identity.cert, "key_file": identity.key}
            kw["client_id"] = identity.cn
        return cls.model_validate(
            {
                "ca_file": pki.ca_cert,
                "cert_file": pki.cloud_cert,
                "key_file": pki.cloud_key,
                "signing_key_file": pki.signing_key,
                "signing_keys_file": pki.signing_keys,
                "root_key_file": pki.root_key,
                "ca_key_file": pki.ca_key,
                "api_cert_file": pki.api_cert,
                "api_key_file": pki.api_key,
                "db_path": db_path,
                "broker_port": broker_port,
                **kw,
            }
        )
