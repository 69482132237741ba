"""What a driver needs to know of each insurer beyond its policy: the claims hotline and the
registered address, both printed on a CTPL policy (regulation Art. 12). Pure data.

The addresses are the companies' registered head-office addresses as they publish them;
an operator checks them against the current business licence before production use.
An insurer missing here is shown without them, never with a guess.
"""

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class InsurerInfo:
    """One insurer's claims hotline and registered address (either may be unknown)."""

    claims_phone: str | None
    address: str | None = None


DIRECTORY: Final[dict[str, InsurerInfo]] = {
    "PICC": InsurerInfo("95518", "北京市朝阳区建国门外大街2号院2号楼"),
    "PINGAN": InsurerInfo("95511", "深圳市福田区益田路5033号平安金融中心"),
    "PAIC": InsurerInfo("95511", "深圳市福田区益田路5033号平安金融中心"),
    "CPIC": InsurerInfo("95500", "上海市黄浦区中山南路1号"),
    "CLPC": InsurerInfo("95519", "北京市西城区金融大街16号"),
    "SSAIC": InsurerInfo("95510"),
    "TPIC": InsurerInfo("95589"),
    "CCIC": InsurerInfo("95590"),
}
"""By insurer code."""


def claims_phone(code: str | None) -> str | None:
    """The claims hotline of insurer ``code``, if known."""
    info = DIRECTORY.get(code or "")
    return None if info is None else info.claims_phone


def address(code: str | None) -> str | None:
    """The registered address of insurer ``code``, if known."""
    info = DIRECTORY.get(code or "")
    return None if info is None else info.address
