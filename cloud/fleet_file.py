"""Import files: the vehicles a dev PKI issued, and policies to seed the store with."""

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, TypeVar

from cryptography import x509
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.protocol.keys import load_public_key
from agent.protocol.topics import VID_RE

from .errors import FleetFileError
from .policy import PolicyRecord, mask_plate
from .store import Store

Vid = Annotated[str, Field(pattern=f"^{VID_RE.pattern}$")]

T = TypeVar("T")


class VehicleEntry(BaseModel):
    """One line of vehicles.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vid: Vid
    vin: str = Field(pattern=r"^[A-HJ-NPR-Z0-9]{17}$")
    cert: Path


class _PolicyFields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    insurer_code: str = Field(min_length=1, max_length=64)
    insurer_name: str = Field(min_length=1, max_length=64)
    policy_no_masked: str = Field(pattern=r"^[A-Z0-9*]{4,32}$")
    coverage_start: date
    coverage_end: date
    source: str = Field(min_length=1, max_length=64)
    verified_at: AwareDatetime
    plate: str | None = Field(default=None, min_length=2, max_length=16)
    """The plate in clear; the store keeps it masked only."""

    def record(self, vid: str) -> PolicyRecord:
        """As the store's record for ``vid`` (the plate masked)."""
        fields = self.model_dump(exclude={"vid", "vin", "plate"})
        plate = None if self.plate is None else mask_plate(self.plate)
        return PolicyRecord(vid=vid, plate_masked=plate, **fields)


class PolicyEntry(_PolicyFields):
    """One line of policies.json: a policy for a registered vid."""

    vid: Vid


class PolicySeedEntry(_PolicyFields):
    """One line of a policies-by-VIN file: the policy a vehicle gets when it enrolls.

    A stand-in for looking the policy up at the sources by VIN (a later issue).
    """

    vin: str = Field(pattern=r"^[A-HJ-NPR-Z0-9]{17}$")


def _load(path: Path, adapter: TypeAdapter[list[T]]) -> list[T]:
    try:
        return adapter.validate_python(json.loads(path.read_text()))
    except OSError as exc:
        raise FleetFileError(path, f"cannot read: {exc.strerror}") from exc
    except ValueError as exc:  # JSONDecodeError and ValidationError
        detail = exc.errors()[0] if isinstance(exc, ValidationError) else None
        reason = f"{'.'.join(map(str, detail['loc']))}: {detail['msg']}" if detail else str(exc)
        raise FleetFileError(path, reason) from exc


async def import_files(
    store: Store, vehicles: Path | None, policies: Path | None, seeds: Path | None = None
) -> tuple[int, int]:
    """Register vehicles, upsert policies by vid and seed policies by VIN; return the counts."""
    nv = np = 0
    if vehicles is not None:
        for v in _load(vehicles, TypeAdapter(list[VehicleEntry])):
            cert = v.cert if v.cert.is_absolute() else vehicles.parent / v.cert
            try:
                issued = x509.load_pem_x509_certificate(cert.read_bytes())
                key = load_public_key(cert.read_bytes())
            except (OSError, ValueError) as exc:
                raise FleetFileError(vehicles, f"{v.vid}: certificate {cert}: {exc}") from exc
            await store.add_vehicle(v.vid, key, v.vin)
            # Recorded so that revoking the vehicle puts this certificate on the CRL.
            await store.add_certificate(
                v.vid, issued.serial_number, key, issued.not_valid_after_utc, datetime.now(UTC)
            )
            nv += 1
    if policies is not None:
        for p in _load(policies, TypeAdapter(list[PolicyEntry])):
            await store.put_policy(p.record(p.vid))
            if p.plate is not None:
                await store.set_plate(p.vid, p.plate)
            np += 1
    if seeds is not None:
        for seed in _load(seeds, TypeAdapter(list[PolicySeedEntry])):
            await store.put_policy_seed(seed.vin, seed.record("v0000000"), seed.plate)
            np += 1
    return nv, np
