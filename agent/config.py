"""The agent's configuration: one frozen record, loaded once from a TOML or JSON file."""

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from .enrollment import check_cloud_url
from .errors import ConfigError
from .protocol import strict, topics
from .protocol.errors import TopicError
from .protocol.strict import Range

PATH_FIELDS: Final = frozenset(
    {"key_file", "cert_file", "ca_file", "db_path", "root_key", "keyset_file", "api_ca_file"}
)
RENEWAL_CHECK_S: Final = 12 * 3600.0
KEYSET_REFRESH_MIN_S: Final = 300.0
TRUSTED_FLOOR_SAVE_S: Final = 600.0


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentConfig(strict.Record):
    """Everything one agent process needs; no defaults for identity or trust.

    Built with keyword arguments, checked at once: a bad value raises ConfigError. Paths
    may be given as text, a list for ``cloud_keys``, an int for a float.
    """

    vid: str
    key_file: Path
    cert_file: Path
    ca_file: Path
    cloud_keys: tuple[Path, ...] = ()
    """Pinned cloud signing keys; the agent trusts these and the usable keys of keyset_file."""
    root_key: Path | None = None
    """The pinned root public key that signs key sets (shipped with the gateway image)."""
    keyset_file: Path | None = None
    """The last key set accepted (its envelope, as received); needs root_key."""
    cloud_url: str | None = None
    """The cloud's HTTPS API, for certificate renewal; none: no renewal."""
    api_ca_file: Path | None = None
    """The CA bundle that authenticates the API; none: the system's trust store."""
    broker_host: str = "127.0.0.1"
    broker_port: Annotated[int, Range(ge=1, le=65535)] = 8883
    db_path: Path
    status_interval_s: Annotated[float, Range(gt=0)] = 3600.0
    reply_timeout_s: Annotated[float, Range(gt=0)] = 10.0
    """How long to wait for the answer to a status request before asking again."""
    keepalive_s: Annotated[int, Range(ge=5, le=300)] = 30
    """MQTT keep-alive: paho drops a link silent for 1.5 times this (45 s by default)."""
    session_expiry_s: Annotated[int, Range(ge=0, le=2**32 - 1)] = 30 * 86400
    reconnect_min_s: Annotated[float, Range(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Range(gt=0)] = 300.0
    operation_timeout_s: Annotated[float, Range(gt=0)] = 15.0
    renewal_check_s: Annotated[float, Range(gt=0)] = RENEWAL_CHECK_S
    """How often the running agent asks whether its certificate needs renewing."""
    renewal_retry_s: Annotated[float, Range(gt=0)] = 300.0
    """The first wait after a failed renewal; it doubles up to renewal_check_s."""
    keyset_refresh_min_s: Annotated[float, Range(gt=0)] = KEYSET_REFRESH_MIN_S
    """The least time between two key set fetches (made when a message's kid is unknown)."""
    trusted_floor_save_s: Annotated[float, Range(gt=0)] = TRUSTED_FLOOR_SAVE_S
    """How often the running agent persists its trusted-time floor (also on every accept)."""
    lang: Literal["zh-CN", "en"] = "zh-CN"
    """The head unit's language (both are served; this one is shown first)."""
    head_unit_host: str = "127.0.0.1"
    head_unit_port: Annotated[int, Range(ge=0, le=65535)] | None = None
    """The head unit's local HTTP port (0: any free one); none: no head-unit server."""
    bus: Literal["none", "simulated", "obd"] = "none"
    """Where vehicle signals come from; ``obd`` needs ``obd_port`` (an ELM327 serial port)."""
    obd_port: str | None = None
    obd_baudrate: Annotated[int, Range(ge=1200, le=4_000_000)] | None = None
    """The ELM327's baud rate; none: python-OBD probes (set it: probing is slow and fragile)."""
    bus_poll_s: Annotated[float, Range(gt=0)] = 1.0
    reminder_stages: tuple[int, ...] = (30, 15, 7, 3, 1)
    """Days before the end at which the driver is prompted (each stage once)."""
    reminder_daily_cap: Annotated[int, Range(ge=1, le=100)] = 3

    def __post_init__(self) -> None:
        try:
            strict.check(self)
            _check_settings(self)
        except strict.Invalid as exc:
            raise ConfigError(f"invalid config: {exc}") from None


def _check_settings(config: AgentConfig) -> None:
    try:
        topics.check_vid(config.vid)
    except TopicError as exc:
        raise strict.Invalid(str(exc), "vid") from None
    if config.cloud_url is not None:
        try:
            object.__setattr__(config, "cloud_url", check_cloud_url(config.cloud_url))
        except ValueError as exc:
            raise strict.Invalid(str(exc), "cloud_url") from None
    if config.keyset_file is not None and config.root_key is None:
        raise strict.Invalid("keyset_file needs root_key to verify it against")
    if config.bus == "obd" and not config.obd_port:
        raise strict.Invalid("bus = obd needs obd_port (the ELM327's serial device)")
    if not config.reminder_stages or any(d < 1 or d > 365 for d in config.reminder_stages):
        raise strict.Invalid("whole days from 1 to 365", "reminder_stages")
    if len(set(config.reminder_stages)) != len(config.reminder_stages):
        raise strict.Invalid("stages must differ", "reminder_stages")
    if not config.cloud_keys and config.keyset_file is None:
        raise strict.Invalid("no cloud_keys and no keyset_file: the agent would trust nothing")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings")
    return data


def _anchor(value: Any, base: Path) -> Any:
    if isinstance(value, str) and not Path(value).is_absolute():
        return str(base / value)
    return value


def _toml_value(value: object) -> str:
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, str | Path):
        # A JSON string is a TOML basic string.
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def dumps_toml(settings: Mapping[str, object]) -> str:
    """A flat TOML file of ``settings`` (None values left out), loadable by ``load_config``."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in settings.items() if v is not None)


def load_config(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> AgentConfig:
    """Build the config from a TOML (.toml) or JSON file plus overrides; raise ConfigError.

    Relative paths in the file are taken from the file's directory; overrides as given.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_file(path)
        base = path.parent
        for name in PATH_FIELDS & data.keys():
            data[name] = _anchor(data[name], base)
        if isinstance(data.get("cloud_keys"), list):
            data["cloud_keys"] = [_anchor(v, base) for v in data["cloud_keys"]]
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return strict.build(AgentConfig, data)
    except strict.Invalid as exc:
        raise ConfigError(f"invalid config: {exc}") from None
