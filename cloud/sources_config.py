"""The insurer and look-up adapters a worker runs renewals with, built from its config."""

from .config import CloudConfig
from .renewals import Insurer, Lookup


def build_sources(config: CloudConfig) -> tuple[dict[str, Insurer], Lookup | None]:
    """The insurers (by code) and the aggregated look-up the config names."""
    return {}, None
