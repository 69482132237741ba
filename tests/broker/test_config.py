"""The text of broker-config/: placement traps, what the harness may change, the docs."""

import re
from pathlib import Path

import pytest

from cloud.pki import DevPki
from simulator.broker import BROKER_CONFIG_DIR, BrokerError, find_plugin, render_config

CONF = BROKER_CONFIG_DIR / "mosquitto.conf"
ACL = BROKER_CONFIG_DIR / "acl"
README = BROKER_CONFIG_DIR / "README.md"

LISTENER_SETTINGS = frozenset(
    {
        "protocol",
        "cafile",
        "capath",
        "certfile",
        "keyfile",
        "crlfile",
        "ciphers",
        "ciphers_tls1.3",
        "tls_version",
        "require_certificate",
        "use_identity_as_username",
        "use_subject_as_username",
        "use_username_as_clientid",
        "max_qos",
        "max_connections",
        "max_topic_alias",
        "mount_point",
        "socket_domain",
        "bind_interface",
        "http_dir",
    }
)
"""Settings that belong to the listener above them in Mosquitto 2.0."""

SITE_KEYS = frozenset(
    {
        "user",
        "pid_file",
        "listener",
        "acl_file",
        "plugin",
        "plugin_opt_crl_file",
        "persistence_location",
        "cafile",
        "certfile",
        "keyfile",
        "crlfile",
        "log_dest",
    }
)


def _settings(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.append((key, value))
    return out


def test_exactly_one_listener_and_no_default_listener() -> None:
    keys = [k for k, _ in _settings(CONF)]
    assert keys.count("listener") == 1
    assert "port" not in keys
    assert "bind_address" not in keys


def test_listener_settings_come_after_the_listener_line() -> None:
    keys = [k for k, _ in _settings(CONF)]
    listener_at = keys.index("listener")
    misplaced = [k for k in keys[:listener_at] if k in LISTENER_SETTINGS]
    assert misplaced == []
    assert {"max_qos", "require_certificate", "use_identity_as_username"} <= set(keys[listener_at:])


def test_policy_settings_have_the_values_the_readme_explains() -> None:
    settings = dict(_settings(CONF))
    assert settings["allow_anonymous"] == "false"
    assert settings["require_certificate"] == "true"
    # The identity plugin sets the username from the certificate: with true, Mosquitto 2.0
    # would never call it at CONNECT (so a wrong client id could not be refused).
    assert settings["use_identity_as_username"] == "false"
    assert settings["plugin"].endswith("/ctpl_identity.so")
    assert settings["plugin_opt_crl_file"] == settings["crlfile"]
    assert settings["tls_version"] == "tlsv1.2"
    assert settings["max_packet_size"] == "65536"
    assert settings["max_qos"] == "1"
    assert settings["set_tcp_nodelay"] == "true"
    assert settings["sys_interval"] == "0"
    assert settings["per_listener_settings"] == "false"


def test_the_harness_changes_only_site_values(broker_pki: DevPki, tmp_path: Path) -> None:
    rendered = render_config(broker_pki, tmp_path, 18883)
    shipped, used = _settings(CONF), _settings(rendered)
    assert [k for k, _ in shipped] == [k for k, _ in used]
    changed = {k for (k, v), (_, w) in zip(shipped, used, strict=True) if v != w}
    assert changed <= SITE_KEYS
    assert dict(used)["listener"] == "18883 127.0.0.1"
    assert dict(used)["acl_file"] == str(ACL)
    assert dict(used)["plugin"] == str(find_plugin())
    assert dict(used)["plugin_opt_crl_file"] == dict(used)["crlfile"] == str(broker_pki.crl)


def test_the_plugin_is_loaded_before_its_options_and_outside_the_listener() -> None:
    keys = [k for k, _ in _settings(CONF)]
    assert keys.count("plugin") == 1
    plugin_at = keys.index("plugin")
    assert plugin_at < keys.index("listener"), "the plugin belongs to the global section"
    options = [i for i, k in enumerate(keys) if k.startswith("plugin_opt_")]
    assert options and all(plugin_at < i < keys.index("listener") for i in options)


def test_the_harness_refuses_to_start_without_the_built_plugin(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="make broker-plugin"):
        find_plugin(tmp_path / "ctpl_identity.so")


def test_acl_never_trusts_the_client_id() -> None:
    # Any client may claim any client id; only the certificate's CN (%u) is authenticated.
    assert "%c" not in ACL.read_text()


def test_acl_grants_the_cloud_nothing_the_plugin_grants_it() -> None:
    # An ACL file cannot name a CN prefix (ctpl-cloud-<name>): no user block at all.
    assert not [line for line in ACL.read_text().splitlines() if line.startswith(("user", "topic"))]


def test_acl_grants_cars_only_their_own_subtree() -> None:
    rules = [line.split() for line in ACL.read_text().splitlines() if line.startswith("pattern")]
    assert rules, "no car rules found"
    for _, access, topic in rules:
        assert topic.startswith("ctpl/v1/%u/"), topic
        if "/down/" in topic:
            assert access == "read", f"cars must never write down topics: {topic}"


def test_readme_explains_every_setting_and_acl_keyword() -> None:
    readme = README.read_text()
    for key, _ in _settings(CONF):
        assert f"`{key}" in readme, f"README.md does not explain {key}"
    for keyword in ("user", "topic", "pattern", "%u"):
        assert f"`{keyword}" in readme
    assert re.search(r"SIGHUP", readme)
