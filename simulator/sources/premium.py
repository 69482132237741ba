"""What the simulated insurers quote: the uniform CTPL tariff (``cloud.tariff``: every
insurer prices CTPL alike, by regulation) and the one-year term.

The simulator prices with the cloud's own tariff module, as real insurers and the cloud
would each implement the one published table; a fault knob (``ctpl_surcharge_cny``)
makes an insurer quote off it, to show that the cloud drops such quotes.
"""

from datetime import date
from decimal import Decimal

from agent.protocol import calendar
from cloud.tariff import ClaimsRecord, Premium, TariffError, Vehicle, money, premium

__all__ = [
    "ClaimsRecord", "Premium", "TariffError", "Vehicle", "money", "premium", "surcharged",
    "term_for",
]  # fmt: skip


def term_for(start: date) -> tuple[date, date]:
    """The one-year term that starts on ``start``: (start, start + 1 year - 1 day)."""
    return start, calendar.one_year_end(start)


def surcharged(p: Premium, surcharge_cny: float) -> Premium:
    """``p`` with ``surcharge_cny`` added to the CTPL line (a fault: off the tariff)."""
    if not surcharge_cny:
        return p
    extra = Decimal(str(surcharge_cny)).quantize(Decimal("0.01"))
    return Premium(p.base, p.floating_rate, p.row, p.scheme, p.ctpl + extra,
                   p.vehicle_vessel_tax, p.tax_exemption)  # fmt: skip
