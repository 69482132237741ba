"""The agent's configuration: one frozen model, loaded once from a TOML or JSON file."""

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .protocol import topics
from .protocol.errors import TopicError

PATH_FIELDS: Final = frozenset({"key_file", "cert_file", "ca_file", "db_path"})


class AgentConfig(BaseModel):
    """Everything one agent process needs; no defaults for identity or trust."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vid: str
    key_file: Path
    cert_file: Path
    ca_file: Path
    cloud_keys: Annotated[tuple[Path, ...], Field(min_length=1)]
    broker_host: str = "127.0.0.1"
    broker_port: Annotated[int, Field(ge=1, le=65535)] = 8883
    db_path: Path
    status_interval_s: Annotated[float, Field(gt=0)] = 3600.0
    reply_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """How long to wait for the answer to a status request before asking again."""
    keepalive_s: Annotated[int, Field(ge=5, le=300)] = 60
    session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 30 * 86400
    reconnect_min_s: Annotated[float, Field(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0)] = 300.0
    operation_timeout_s: Annotated[float, Field(gt=0)] = 15.0

    @field_validator("vid")
    @classmethod
    def _vid_well_formed(cls, vid: str) -> str:
        try:
            return topics.check_vid(vid)
        except TopicError as exc:
            raise ValueError(str(exc)) from None


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
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError("invalid config: " + "; ".join(lines)) from None
