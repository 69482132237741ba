"""Stand-ins for the outside world as real HTTP servers: the national platform, insurers,
third parties (docs/sources.md holds the REST contract)."""

from .common import ClaimsRecord, HttpServer, Knobs, Policy, SimService, VehicleRecord
from .insurer import Insurer, Order, Quote, WebhookAttempt, sign
from .national import NationalPlatform, ThirdPartyPlatform
from .premium import Premium, premium, term_for

__all__ = [
    "ClaimsRecord",
    "HttpServer",
    "Insurer",
    "Knobs",
    "NationalPlatform",
    "Order",
    "Policy",
    "Premium",
    "Quote",
    "SimService",
    "ThirdPartyPlatform",
    "VehicleRecord",
    "WebhookAttempt",
    "premium",
    "sign",
    "term_for",
]
