"""The cloud worker's configuration: one frozen model, built once and passed down."""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .pki import DevPki


class CloudConfig(BaseModel):
    """Everything a cloud worker needs; paths are read when the worker starts, not here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker_host: str = "127.0.0.1"
    broker_port: int = Field(8883, ge=1, le=65535)
    ca_file: Path
    cert_file: Path
    key_file: Path
    signing_key_file: Path
    db_path: Path
    client_id: str = "ctpl-cloud-1"
    fresh_for_s: float = Field(86400.0, gt=0)
    expiring_within_days: int = Field(30, ge=0)
    keepalive_s: int = Field(30, ge=5, le=300)

    @classmethod
    def from_pki(
        cls, pki: DevPki, *, db_path: Path, broker_port: int, **kw: object
    ) -> "CloudConfig":
        """A config that uses the files of a development PKI."""
        return cls.model_validate(
            {
                "ca_file": pki.ca_cert,
                "cert_file": pki.cloud_cert,
                "key_file": pki.cloud_key,
                "signing_key_file": pki.signing_key,
                "db_path": db_path,
                "broker_port": broker_port,
                **kw,
            }
        )
