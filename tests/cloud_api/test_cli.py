"""``ctpl-cloud serve`` flags for the HTTPS API."""

from pathlib import Path

import pytest

from cloud.cli import _parser, _serve_config
from cloud.config import CloudConfig
from cloud.pki import DevPki


def _config(argv: list[str], environ: dict[str, str] | None = None) -> CloudConfig:
    return _serve_config(_parser().parse_args(["serve", "--db", "x.db", *argv]), environ or {})


def test_without_http_port_there_is_no_api(shared_pki: DevPki) -> None:
    config = _config(["--pki", str(shared_pki.root)])
    assert config.http_port is None


def test_http_port_with_a_dev_pki_takes_its_api_files(shared_pki: DevPki, tmp_path: Path) -> None:
    token = tmp_path / "admin"
    token.write_text("s3cret\n")
    config = _config(
        ["--pki", str(shared_pki.root), "--http-port", "8443", "--admin-token-file", str(token)]
    )
    assert config.http_port == 8443
    assert config.api_cert_file == shared_pki.api_cert
    assert config.root_key_file == shared_pki.root_key
    assert config.admin_token is not None
    assert config.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)


def test_the_admin_token_may_come_from_the_environment(shared_pki: DevPki) -> None:
    argv = ["--pki", str(shared_pki.root), "--http-port", "8443"]
    config = _config(argv, {"CTPL_ADMIN_TOKEN": "from-env"})
    assert config.admin_token is not None
    assert config.admin_token.get_secret_value() == "from-env"
    assert _config(argv).admin_token is None


def test_http_port_without_the_api_files_is_refused(shared_pki: DevPki) -> None:
    files = ["--ca", str(shared_pki.ca_cert), "--cert", str(shared_pki.cloud_cert)]
    files += ["--key", str(shared_pki.cloud_key), "--signing-key", str(shared_pki.signing_key)]
    assert _config(files).http_port is None
    with pytest.raises(SystemExit, match="root_key_file"):
        _config([*files, "--http-port", "8443"])


def test_a_postgresql_url_and_fleet_webhooks(shared_pki: DevPki, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.json"
    hooks.write_text(
        '[{"fleet_id": "fabcdefghijklmnop", "url": "https://ops.example/h", "secret": "k"}]'
    )
    argv = ["--pki", str(shared_pki.root), "--fleet-webhooks", str(hooks)]
    config = _serve_config(
        _parser().parse_args(["serve", "--db", "postgresql://ctpl@db:5432/ctpl", *argv]), {}
    )
    assert config.store_target == "postgresql://ctpl@db:5432/ctpl"
    [hook] = config.fleet_webhooks
    assert (hook.fleet_id, hook.url, hook.secret.get_secret_value()) == (
        "fabcdefghijklmnop", "https://ops.example/h", "k",
    )  # fmt: skip
    assert _config(["--pki", str(shared_pki.root)]).store_target == Path("x.db")
    hooks.write_text('{"not": "a list"}')
    with pytest.raises(SystemExit, match="expected a JSON list"):
        _config(argv)
