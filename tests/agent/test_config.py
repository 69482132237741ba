"""Loading the agent's config from TOML or JSON plus overrides."""

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError

VID = "vaaaaaaaaaaaaaaa1"
TOML = f"""
vid = "{VID}"
key_file = "car.key"
cert_file = "car.crt"
ca_file = "/etc/ctpl/ca.crt"
cloud_keys = ["cloud-signing.pub"]
db_path = "state/agent.db"
broker_host = "broker.example"
status_interval_s = 600
"""


def test_toml_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(TOML)
    config = load_config(path)
    assert config.vid == VID
    assert config.key_file == tmp_path / "car.key"
    assert config.ca_file == Path("/etc/ctpl/ca.crt")
    assert config.cloud_keys == (tmp_path / "cloud-signing.pub",)
    assert config.db_path == tmp_path / "state/agent.db"
    assert (config.broker_host, config.broker_port, config.status_interval_s) == (
        "broker.example",
        8883,
        600.0,
    )


def test_json_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(
        json.dumps(
            {
                "vid": VID,
                "key_file": "/k",
                "cert_file": "/c",
                "ca_file": "/a",
                "cloud_keys": ["/p"],
                "db_path": "/d",
            }
        )
    )
    config = load_config(path, {"broker_port": 18883, "broker_host": None})
    assert (config.broker_host, config.broker_port) == ("127.0.0.1", 18883)


def test_overrides_alone_are_enough() -> None:
    config = load_config(
        None,
        {
            "vid": VID,
            "key_file": Path("k"),
            "cert_file": Path("c"),
            "ca_file": Path("a"),
            "cloud_keys": (Path("p"),),
            "db_path": Path("d"),
        },
    )
    assert config.key_file == Path("k")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('vid = "LSIMCAR0000000001"', "vid"),
        ("broker_port = 0", "broker_port"),
        ("cloud_keys = []", "cloud_keys"),
        ("status_interval_s = 0", "status_interval_s"),
        ('colour = "red"', "colour"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, change: str, message: str) -> None:
    key = change.split(" ", 1)[0]
    lines = [line for line in TOML.splitlines() if not line.startswith(key + " ")]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join([*lines, change]))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("text", ["not = [toml", "[1, 2]"])
def test_unreadable_files_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / ("agent.toml" if "toml" in text else "agent.json")
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml")


def test_config_is_frozen(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(TOML)
    config = load_config(path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.vid = "vbbbbbbbbbbbbbbb2"  # type: ignore[misc]
    assert isinstance(config, AgentConfig)
    assert hash(config) == hash(load_config(path))


BASE: dict[str, Any] = {
    "vid": VID,
    "key_file": "k",
    "cert_file": "c",
    "ca_file": "a",
    "cloud_keys": ["p"],
    "db_path": "d",
}


def test_built_directly_paths_from_text_and_numbers_widened() -> None:
    config = AgentConfig(**BASE | {"status_interval_s": 600, "cloud_url": "https://a.example/"})
    assert (config.key_file, config.cloud_keys) == (Path("k"), (Path("p"),))
    assert config.status_interval_s == 600.0 and isinstance(config.status_interval_s, float)
    assert config.cloud_url == "https://a.example"
    assert dataclasses.replace(config, broker_port=1).broker_port == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vid": "LSIMCAR0000000001"}, "vid"),
        ({"broker_port": 65536}, "broker_port"),
        ({"broker_port": "8883"}, "broker_port"),
        ({"broker_port": 8883.0}, "broker_port"),
        ({"keepalive_s": True}, "keepalive_s"),
        ({"status_interval_s": "600"}, "status_interval_s"),
        ({"status_interval_s": float("nan")}, "status_interval_s"),
        ({"broker_host": 5}, "broker_host"),
        ({"key_file": 5}, "key_file"),
        ({"cloud_keys": "p"}, "cloud_keys"),
        ({"cloud_keys": ["p", 1]}, r"cloud_keys\.1"),
        ({"cloud_url": "http://a.example"}, "cloud_url"),
        ({"keyset_file": "ks"}, "root_key"),
    ],
)
def test_values_of_the_wrong_type_or_range_are_config_errors(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        AgentConfig(**BASE | change)
    with pytest.raises(ConfigError, match=message):
        load_config(None, BASE | change)


def test_a_missing_setting_is_named() -> None:
    with pytest.raises(ConfigError, match="db_path: missing"):
        load_config(None, {k: v for k, v in BASE.items() if k != "db_path"})
