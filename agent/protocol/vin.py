"""VINs in the contract: the check, and the salted digest a ``policy.state`` carries.

The VIN is personal data: it never crosses the broker. The cloud sends
``vin_digest(vid, VIN)`` of the insured vehicle, and the car compares it with the digest
of the VIN it reads off its own bus (OBD-II mode 09 PID 02).
"""

import hashlib
import re
from typing import Final

VIN_RE: Final = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
"""A VIN: 17 letters and digits, never I, O or Q (ISO 3779)."""


class VinError(ValueError):
    """Text that is not a VIN."""


def check_vin(text: str) -> str:
    """The VIN in ``text`` (spaces and NULs trimmed, upper-cased); raise VinError if none."""
    vin = text.strip().strip("\x00").strip().upper()
    if VIN_RE.fullmatch(vin) is None:
        raise VinError("not a 17-character VIN")
    return vin


def vin_digest(vid: str, vin: str) -> str:
    """SHA-256 over the vid and the VIN: salted by the vid, so no identifier across cars."""
    return hashlib.sha256(f"ctpl-vin/1\n{vid}\n{check_vin(vin)}".encode()).hexdigest()


def mask_vin(vin: str) -> str:
    """The VIN as logs and screens may show it: all but the last 4 characters hidden."""
    return "*" * max(len(vin) - 4, 0) + vin[-4:]
