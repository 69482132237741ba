"""The outbound URL policy, pure: which URLs and addresses an operator may point the cloud
at, and why not; the save-time check with a stand-in DNS."""

import asyncio
import ipaddress
import socket

import pytest

from cloud.outbound import (
    REASONS,
    Refusal,
    Target,
    TargetRefused,
    address_class,
    check_url,
    judge_address,
    judge_url,
    vetted_addresses,
)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),  # mapped, public inside
        ("64:ff9b::808:808", None),  # NAT64 of a public address (DNS64 networks)
        ("2002:808:808::1", None),  # 6to4 of a public address
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("64:ff9b::7f00:1", "loopback"),  # NAT64
        ("2002:7f00:1::", "loopback"),  # 6to4
        ("10.0.0.1", "private_address"),
        ("172.31.255.255", "private_address"),
        ("192.168.0.1", "private_address"),
        ("fd12:3456::1", "private_address"),
        ("fc00::1", "private_address"),
        ("fec0::1", "private_address"),  # site-local, deprecated
        ("64:ff9b::a00:1", "private_address"),
        ("::ffff:10.0.0.1", "private_address"),
        ("169.254.169.254", "link_local"),
        ("::ffff:169.254.169.254", "link_local"),
        ("fe80::1", "link_local"),
        ("fe80::1%eth0", "link_local"),  # as getaddrinfo may answer
        ("100.64.0.1", "shared_address"),
        ("100.127.255.254", "shared_address"),
        ("64:ff9b::6440:1", "shared_address"),
        ("224.0.0.1", "multicast"),
        ("224.0.1.1", "multicast"),  # is_global says True
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("255.255.255.255", "reserved"),
        ("240.0.0.1", "reserved"),
        ("0.1.2.3", "reserved"),
        ("192.0.0.8", "reserved"),
        ("192.0.2.1", "reserved"),  # documentation
        ("198.51.100.1", "reserved"),
        ("203.0.113.1", "reserved"),
        ("198.18.0.1", "reserved"),  # benchmarking
        ("192.88.99.1", "reserved"),  # 6to4 relays
        ("2001:db8::1", "reserved"),
        ("3fff::1", "reserved"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "reserved"),  # Teredo
        ("64:ff9b:1::1", "reserved"),  # local-use NAT64
        ("::8.8.8.8", "reserved"),  # IPv4-compatible, even of a public address
        ("100::1", "reserved"),  # discard
    ],
)
def test_address_classes(address: str, expected: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected
    assert expected is None or expected in REASONS


@pytest.mark.parametrize(
    ("address", "allow_loopback", "plain_http", "expected"),
    [
        ("127.0.0.1", False, False, "loopback"),
        ("127.0.0.1", True, False, None),
        ("127.0.0.1", True, True, None),
        ("::1", True, True, None),
        ("10.0.0.1", True, False, "private_address"),  # the setting opens loopback only
        ("169.254.169.254", True, True, "link_local"),
        ("8.8.8.8", False, False, None),
        ("8.8.8.8", True, True, "scheme"),  # plain http never leaves this host
    ],
)
def test_the_development_setting_opens_loopback_and_nothing_else(
    address: str, allow_loopback: bool, plain_http: bool, expected: str | None
) -> None:
    got = judge_address(
        ipaddress.ip_address(address), allow_loopback=allow_loopback, plain_http=plain_http
    )
    assert got == (None if expected is None else Refusal(expected))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:5432/", "scheme"),
        ("http://[::1]:5432/", "scheme"),
        ("http://localhost:22/", "scheme"),
        ("http://ops.example.com/h", "scheme"),
        ("ftp://ops.example.com/h", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("https://127.0.0.1:8883/", "loopback"),
        ("https://[::ffff:127.0.0.1]/", "loopback"),
        ("https://localhost/", "loopback"),
        ("https://LocalHost./", "loopback"),
        ("https://api.localhost/", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "link_local"),
        ("https://10.0.0.1:8443/", "private_address"),
        ("https://[64:ff9b::a00:1]/", "private_address"),
        ("https://user:pw@ops.example.com/h", "credentials"),
        ("https://user@ops.example.com/h", "credentials"),
        ("https://@ops.example.com/h", "credentials"),
        ("https://ops.example.com\\@127.0.0.1/", "not_a_url"),  # a backslash
        ("https://ops.example.com/h#x", "fragment"),
        ("https://ops.example.com/h#", "fragment"),
        ("https://", "host"),
        ("https:///h", "host"),
        ("https://127.1/", "host"),
        ("https://2130706433/", "host"),
        ("https://0x7f.0.0.1/", "host"),
        ("https://0x7f000001/", "host"),
        ("https://127.000.000.001/", "host"),
        ("https://a_b.example/", "host"),
        ("https://-a.example/", "host"),
        ("https://a..example/", "host"),
        ("https://%31%32%37.0.0.1/", "host"),
        ("https://[fe80::1%25eth0]/", "host"),
        ("https://ops.example.com:0/", "not_a_url"),
        ("https://ops.example.com:70000/", "not_a_url"),
        ("https://ops.example.com:x/", "not_a_url"),
        ("https://ops.example.com/a b", "not_a_url"),
        ("https://ops.example.com/\n", "not_a_url"),
        (" https://ops.example.com/", "not_a_url"),
        ("https://ops.example.com/提醒", "not_a_url"),  # percent-encode the path
        ("https://[zz]/", "not_a_url"),
        ("https://ops.example.com/" + "a" * 2048, "not_a_url"),
    ],
)
def test_urls_refused_without_dns(url: str, expected: str) -> None:
    assert judge_url(url) == Refusal(expected)


@pytest.mark.parametrize(
    ("url", "target", "host_header"),
    [
        (
            "https://ops.example.com/ctpl-alerts",
            Target("https", "ops.example.com", 443, "/ctpl-alerts", None),
            "ops.example.com",
        ),
        (
            "https://OPS.Example.com:8443?fleet=a",
            Target("https", "ops.example.com", 8443, "/?fleet=a", None),
            "ops.example.com:8443",
        ),
        (
            "https://车队.例子.测试/h",
            Target("https", "xn--h43ak6k.xn--fsqu00a.xn--0zwm56d", 443, "/h", None),
            "xn--h43ak6k.xn--fsqu00a.xn--0zwm56d",
        ),
        (
            "https://ops.example.com./h",
            Target("https", "ops.example.com", 443, "/h", None),
            "ops.example.com",
        ),
        (
            "https://8.8.8.8/h",
            Target("https", "8.8.8.8", 443, "/h", ipaddress.ip_address("8.8.8.8")),
            "8.8.8.8",
        ),
        (
            "https://[2606:4700::1111]:444/h",
            Target("https", "2606:4700::1111", 444, "/h", ipaddress.ip_address("2606:4700::1111")),
            "[2606:4700::1111]:444",
        ),
    ],
)
def test_urls_accepted_and_the_target_connected_to(
    url: str, target: Target, host_header: str
) -> None:
    assert judge_url(url) == target
    assert target.host_header == host_header


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080/hook", None),
        ("http://[::1]:8080/hook", None),
        ("http://localhost:8080/hook", None),
        ("http://[::ffff:127.0.0.1]:8080/hook", None),
        ("https://127.0.0.1:8443/hook", None),
        ("https://localhost/hook", None),
        ("http://ops.example.com/hook", "scheme"),  # a name that is not localhost
        ("http://8.8.8.8/hook", "scheme"),
        ("http://10.0.0.1/hook", "scheme"),
        ("https://10.0.0.1/hook", "private_address"),
        ("https://169.254.169.254/", "link_local"),
    ],
)
def test_urls_with_the_development_setting(url: str, expected: str | None) -> None:
    got = judge_url(url, allow_loopback=True)
    assert (got.reason if isinstance(got, Refusal) else None) == expected


class Dns:
    """A stand-in resolver: name -> addresses; absent: no such name."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, host)
        return self.answers[host]


DNS = {
    "ops.example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    "internal.example.com": ["10.1.2.3"],
    "half.example.com": ["93.184.216.34", "127.0.0.1"],
    "mapped.example.com": ["::ffff:169.254.169.254"],
    "nat64.example.com": ["64:ff9b::7f00:1"],
    "empty.example.com": [],
    "junk.example.com": ["not an address"],
    "localhost": ["127.0.0.1"],
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://ops.example.com/h", None),
        ("https://8.8.8.8/h", None),  # a literal: DNS is not asked
        ("https://internal.example.com/h", "host_not_public"),
        ("https://half.example.com/h", "host_not_public"),
        ("https://mapped.example.com/h", "host_not_public"),
        ("https://nat64.example.com/h", "host_not_public"),
        ("https://empty.example.com/h", "host_not_public"),
        ("https://junk.example.com/h", "host_not_public"),
        ("https://missing.example.com/h", "host_not_public"),
        ("https://10.0.0.1/h", "private_address"),
        ("https://localhost/h", "loopback"),  # never asked
    ],
)
async def test_saving_resolves_the_name_and_refuses_any_internal_answer(
    url: str, expected: str | None
) -> None:
    dns = Dns(DNS)
    got = await check_url(url, resolver=dns)
    assert got == (None if expected is None else Refusal(expected))
    host = url.split("/")[2]
    assert dns.asked == ([host] if host.endswith(".com") else [])


async def test_a_resolver_that_hangs_is_refused_in_time() -> None:
    async def hangs(host: str, port: int) -> list[str]:
        await asyncio.sleep(60)
        return ["93.184.216.34"]

    async with asyncio.timeout(5):
        got = await check_url("https://slow.example.com/h", resolver=hangs, timeout_s=0.05)
    assert got == Refusal("host_not_public")


async def test_connect_time_vetting_refuses_the_whole_name_for_one_bad_address() -> None:
    dns = Dns(DNS)
    ok = await vetted_addresses(
        "ops.example.com", 443, resolver=dns, allow_loopback=False, plain_http=False
    )
    assert [str(a) for a in ok] == DNS["ops.example.com"]
    for host, reason in [("half.example.com", "loopback"), ("mapped.example.com", "link_local")]:
        with pytest.raises(TargetRefused) as refused:
            await vetted_addresses(host, 443, resolver=dns, allow_loopback=False, plain_http=False)
        assert refused.value.reason == reason
    with pytest.raises(OSError):  # no answer is a transport failure, retried, not a refusal
        await vetted_addresses(
            "missing.example.com", 443, resolver=dns, allow_loopback=False, plain_http=False
        )
    assert await vetted_addresses(
        "localhost", 80, resolver=dns, allow_loopback=True, plain_http=True
    ) == [ipaddress.ip_address("127.0.0.1")]
