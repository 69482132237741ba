"""Stand-ins for the outside world as real HTTP servers: the national platform, insurers,
third parties (docs/sources.md holds the REST contract)."""

from .common import HttpServer, Knobs, Policy, SimService
from .insurer import Insurer, Order, Quote, WebhookAttempt, sign
from .national import NationalPlatform, ThirdPartyPlatform
from .premium import Premium, premium_for, term_for

__all__ = [
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
    "WebhookAttempt",
    "premium_for",
    "sign",
    "term_for",
]
