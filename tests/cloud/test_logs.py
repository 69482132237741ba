"""The cloud's log lines: JSON objects, and nothing personal in clear, wherever it hides."""

import io
import json
import logging
import random
from collections.abc import Iterator

import pytest

from cloud.enrollment import new_fleet_id
from cloud.logs import JsonFormatter, TextFormatter, configure, scrub
from cloud.pki import new_vid

VINS = [
    "LSVAU2180N2183294",  # SAIC Volkswagen
    "LFV2A21K4D4123456",  # FAW-Volkswagen
    "LGBH52E05KY123456",  # Dongfeng Nissan
    "1HGCM82633A004352",
    "WP0ZZZ99ZTS392124",
    "lsvau2180n2183294",  # typed in lower case
]
PLATES = [
    "沪A12345",
    "沪A·12345",
    "京B·D12345",
    "粤B·DF1234",
    "川A 8K9X2",
    "苏E·F8888",
    "浙a12345",
    "新A·12345",
    "蒙B12345",
    "藏A·1234D",
    "琼A12345",
    "黑A·AB123",
    "粤Z·1234港",
    "沪A1234挂",
    "鄂A•12345",
    "苏Ｅ１２３４５",
]
POLICY_NOS = [
    "PDZA2026000012345678",
    "PDAA202631010000012345",
    "ASHH3110002600001234",
    "pdza2026000012345678",
    "AB12345678",
]
SECRETS = VINS + PLATES + POLICY_NOS

TEMPLATES = [
    "{}",
    "vin={}",
    "VIN:{}的车",
    "car {} seen",
    "({})",
    '"{}"',
    "{};{}",
    "\n{}\n",
    "plate/{}/x",
    "vehicle{}",  # glued to a word
    "0x{}",
]


def masked(secret: str) -> str:
    return scrub(secret)


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{random.random()}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


@pytest.fixture(params=["json", "text"])
def logged(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    formatter = JsonFormatter() if request.param == "json" else TextFormatter()
    yield _capture(formatter)


def assert_clear_of(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} in clear in {text!r}"
        assert secret.replace("·", "") not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LSVAU2180N2183294", "*************3294"),
        ("vin=lsvau2180n2183294;", "vin=*************3294;"),
        ("VIN:LSVAU2180N2183294的车", "VIN:*************3294的车"),
        ("京LSVAU2180N2183294", "京*************3294"),
        ("沪A12345", "沪A·****5"),
        ("沪A·12345 and 京B·D12345", "沪A·****5 and 京B·****5"),
        ("粤Z·1234港", "粤Z·****港"),
        ("川a 8k9x2", "川A·****2"),
        ("PDZA2026000012345678", "PDZA****5678"),
        ("policy PDAA202631010000012345.", "policy PDAA****2345."),
        ("身份证31010519491231002X", "身份证3101****002X"),
        # Written another way (issue 13): an HTTP client's query string, a JSON-escaped body.
        (
            "GET http://127.0.0.1:8000/v1/policies?plate=%E6%B2%AAA31676&vin=LSVAU2180N2183294",
            "GET http://127.0.0.1:8000/v1/policies?plate=沪A·****6&vin=*************3294",
        ),
        ("?plate=%E6%B2%AA%41%33%31%36%37%36", "?plate=沪A·****6"),
        ('{"plate": "\\u6caaA31676"}', '{"plate": "沪A·****6"}'),
        ('{"plate": "\\u6caa\\u0041\\u00b731676"}', '{"plate": "沪A·****6"}'),
        # Encoded runs that hold nothing personal stay as they are.
        ("GET /v1/orders/ord_picc_000001?x=%20y 100%25 %ZZ", None),
        ('{"name": "\\u5e73\\u5b89"}', None),
        # Left as they are: already masked, pseudonyms, digests, ordinary text.
        ("PDZA****5678 PDZA2026****2345 沪A·****5 *************3294", None),
        ("e3b0c44298fc1c149afbf4c8996fb924 r_0123456789abcdef01234567", None),
        ("2026-11-25T12:00:00.123+00:00 connected to 127.0.0.1:8883", None),
        ('File "/srv/.venv/lib/python3.11/site-packages/x.py", line 123', None),
        ("loaded 100000 vehicles in 12.5 s; ES256 verify 63.9 µs", None),
    ],
)
def test_scrub_table(text: str, expected: str | None) -> None:
    assert scrub(text) == (text if expected is None else expected)


@pytest.mark.parametrize("make", [new_vid, new_fleet_id])
def test_vids_and_fleet_ids_stay_readable(make: object) -> None:
    assert callable(make)
    for _ in range(300):
        ident = make()
        assert scrub(f"{ident}: renewal request refused") == f"{ident}: renewal request refused"


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_no_secret_in_clear_in_any_context(secret: str, template: str) -> None:
    text = template.format(secret, secret)
    assert_clear_of(scrub(text), [secret])


def test_random_vins_never_come_out_in_clear() -> None:
    rng = random.Random(7)
    alphabet = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
    for _ in range(2000):
        vin = "".join(rng.choice(alphabet) for _ in range(13)) + f"{rng.randrange(10**4):04d}"
        if not any(c.isalpha() for c in vin):
            continue
        line = rng.choice(TEMPLATES).format(vin, vin)
        out = scrub(line)
        assert vin not in out and vin[-4:] in out


@pytest.mark.parametrize("secret", SECRETS)
def test_in_the_message_and_its_arguments(
    logged: tuple[logging.Logger, io.StringIO], secret: str
) -> None:
    log, stream = logged
    log.info("the car %s", secret)
    log.info("the car %(who)s, twice: %(who)s", {"who": secret})
    log.warning(f"formatted in: {secret}")
    log.info("%s %r %d", secret, (secret,), 3)
    out = stream.getvalue()
    assert_clear_of(out, [secret])
    assert masked(secret) in out


@pytest.mark.parametrize("secret", SECRETS)
def test_in_exceptions_and_their_causes(
    logged: tuple[logging.Logger, io.StringIO], secret: str
) -> None:
    log, stream = logged
    try:
        try:
            raise KeyError(secret)
        except KeyError as exc:
            raise ValueError(f"no policy for {secret}") from exc
    except ValueError:
        log.exception("lookup failed for %s", secret)
    log.info("with a stack", stack_info=True, extra={"about": secret})
    out = stream.getvalue()
    assert "Traceback" in out and "KeyError" in out
    assert_clear_of(out, [secret])


@pytest.mark.parametrize("secret", SECRETS)
def test_in_extra_fields(secret: str) -> None:
    log, stream = _capture(JsonFormatter())

    class Shown:
        def __str__(self) -> str:
            return f"an object holding {secret}"

    log.info(
        "extras",
        extra={
            "vin": secret,
            "nested": {"plate": secret, "list": [secret, 1, None, {"deep": secret}]},
            secret: "as a key",
            "obj": Shown(),
            "tuple": (secret,),
        },
    )
    out = stream.getvalue()
    assert_clear_of(out, [secret])
    line = json.loads(out)
    assert line["vin"] == masked(secret)
    assert line["nested"]["list"][1:3] == [1, None]
    assert line["obj"] == f"an object holding {masked(secret)}"


def test_json_lines_parse_one_object_per_record() -> None:
    log, stream = _capture(JsonFormatter())
    log.info("first line\nsecond line, 沪A12345", extra={"vid": "v" + "a" * 16, "n": 3})
    log.error("no %s args %s", "enough")  # a bad call still gives a line
    try:
        raise RuntimeError("boom LSVAU2180N2183294")
    except RuntimeError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, bad, failed = (json.loads(line) for line in lines)
    assert set(first) == {"ts", "level", "logger", "msg", "vid", "n"}
    assert first["ts"].endswith("Z") and first["level"] == "INFO"
    assert first["msg"] == "first line\nsecond line, 沪A·****5"
    assert (first["vid"], first["n"]) == ("v" + "a" * 16, 3)
    assert bad["level"] == "ERROR" and "did not fit" in bad["msg"]
    assert "boom *************3294" in failed["exc"]
    assert failed["logger"] == log.name


def test_configure_installs_one_scrubbing_handler_and_leaves_others_alone() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers[:] = []
        first, second = io.StringIO(), io.StringIO()
        configure("json", logging.INFO, first)
        configure("json", logging.INFO, second)  # replaces its own handler
        assert len(root.handlers) == 1
        logging.getLogger("cloud.test").info("car %s", "LSVAU2180N2183294")
        assert first.getvalue() == ""
        assert json.loads(second.getvalue())["msg"] == "car *************3294"
        foreign = logging.NullHandler()
        root.handlers[:] = [foreign]
        configure("text", logging.INFO, second)  # someone else's root: left alone
        assert root.handlers == [foreign]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
