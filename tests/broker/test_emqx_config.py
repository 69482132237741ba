"""broker-config/emqx/ without a running EMQX: the ACL as EMQX 5 evaluates it, and emqx.conf.

EMQX is not installed here, so these tests model what can be modelled honestly:

- ``acl.conf`` is parsed (Erlang terms) and evaluated with EMQX 5's rules, as read in
  its source (``emqx_authz_rule``, ``emqx_topic``, ``emqx_channel``): first matching rule
  wins, ``${username}`` rendered per client, a SUBSCRIBE's filter matched *as a topic*
  against each rule's filter, ``$share/<group>/<filter>`` authorized as ``<filter>``, and
  ``authorization.no_match`` when nothing matches. Its verdicts must equal Mosquitto's
  (``broker-config/acl`` evaluated the Mosquitto way for cars; the identity plugin's rules,
  mirrored here, for the cloud, which the ACL file no longer names) for cars and the cloud
  on every concrete topic, and SUBSCRIBE must refuse what Mosquitto 2.0's ACL let through.
- ``emqx.conf`` is parsed as HOCON (the subset it uses) and its security settings are
  checked; the ``cinfo`` authenticator's checks are evaluated for the client-id binding.

What this cannot show is that a live EMQX agrees with the model: broker-config/emqx/README.md
lists what still has to be run.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pytest

from agent.protocol import topics
from agent.protocol.topics import CLOUD_SHARED_SUBSCRIPTION
from cloud.pki import CLOUD_CN_RE

BROKER_CONFIG = Path(__file__).resolve().parents[2] / "broker-config"
EMQX_DIR = BROKER_CONFIG / "emqx"
ACL_CONF = EMQX_DIR / "acl.conf"
EMQX_CONF = EMQX_DIR / "emqx.conf"
README = EMQX_DIR / "README.md"
MOSQUITTO_ACL = BROKER_CONFIG / "acl"
MOSQUITTO_CONF = BROKER_CONFIG / "mosquitto.conf"

CAR_A = "vaaaaaaa1"
CAR_B = "vbbbbbbb2"
CLOUD = "ctpl-cloud"
UP: tuple[topics.UpKind, ...] = ("status", "renewal", "event")
DOWN: tuple[topics.DownKind, ...] = ("policy", "renewal", "error", "receipt")


# ---- Erlang terms (the subset acl.conf uses) --------------------------------------


@dataclass(frozen=True)
class Atom:
    name: str


Term: TypeAlias = Atom | str | int | tuple["Term", ...] | list["Term"]

_ERL_TOKEN = re.compile(
    r"""\s+|%[^\n]*                      # blanks and comments
      |(?P<punct>[{}\[\],.])
      |(?P<string>"(?:[^"\\]|\\.)*")
      |(?P<atom>[a-z][A-Za-z0-9_@]*|'(?:[^'\\]|\\.)*')
      |(?P<int>\d+)""",
    re.VERBOSE,
)


def _erl_tokens(text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(text):
        m = _ERL_TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"acl.conf: cannot read {text[pos : pos + 30]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind is not None:
            yield kind, m.group(kind)


def _unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), quoted[1:-1])


def parse_erlang_terms(text: str) -> list[Term]:
    """Every ``Term.`` of a file of Erlang terms."""
    tokens = list(_erl_tokens(text))
    pos = 0

    def term() -> Term:
        nonlocal pos
        kind, value = tokens[pos]
        pos += 1
        if kind == "string":
            return _unescape(value)
        if kind == "atom":
            return Atom(_unescape(value) if value.startswith("'") else value)
        if kind == "int":
            return int(value)
        if value in "{[":
            close = "}" if value == "{" else "]"
            items: list[Term] = []
            while tokens[pos][1] != close:
                items.append(term())
                if tokens[pos][1] == ",":
                    pos += 1
                elif tokens[pos][1] != close:
                    raise ValueError(f"acl.conf: expected , or {close}, got {tokens[pos][1]!r}")
            pos += 1
            return tuple(items) if close == "}" else items
        raise ValueError(f"acl.conf: unexpected {value!r}")

    out: list[Term] = []
    while pos < len(tokens):
        out.append(term())
        if tokens[pos] != ("punct", "."):
            raise ValueError("acl.conf: a term must end with a dot")
        pos += 1
    return out


# ---- EMQX 5 authorization, as emqx_authz_rule / emqx_topic / emqx_channel do it ------


def emqx_match(name: str, filter_: str) -> bool:
    """emqx_topic:match/2 on words: ``name`` may itself be a filter (a SUBSCRIBE)."""
    n, f = name.split("/"), filter_.split("/")
    if n[0].startswith("$") and f[0] in ("+", "#"):
        return False

    def tokens(n: list[str], f: list[str]) -> bool:
        # The clauses of match_tokens/2, in order; Erlang does not backtrack between them.
        if not n and not f:
            return True
        if n and f and n[0] == f[0]:
            return tokens(n[1:], f[1:])
        if n and f and f[0] == "+":
            return tokens(n[1:], f[1:])
        return f == ["#"]

    return tokens(n, f)


def real_topic(filter_: str) -> str:
    """emqx_topic:parse/1 then get_shared_real_topic/1: what SUBSCRIBE authorization sees."""
    if filter_.startswith("$queue/"):
        return filter_.removeprefix("$queue/")
    if filter_.startswith("$share/"):
        group, sep, rest = filter_.removeprefix("$share/").partition("/")
        if not sep or not group or not rest or "+" in group or "#" in group:
            raise ValueError(f"invalid shared subscription {filter_!r}")
        return rest
    return filter_


@dataclass(frozen=True)
class Client:
    username: str
    clientid: str


@dataclass(frozen=True)
class Rule:
    permission: str
    who: Term
    action: str
    topics: tuple[Term, ...]

    def matches(self, client: Client, action: str, topic: str) -> bool:
        return (
            self.action in (action, "all")
            and _who_matches(self.who, client)
            and any(_topic_cond_matches(c, client, topic) for c in self.topics)
        )


def _who_matches(who: Term, client: Client) -> bool:
    if who == Atom("all"):
        return True
    match who:
        case (Atom("username" | "user"), str(name)):
            return client.username == name
        case (Atom("username" | "user"), (Atom("re"), str(pattern))):
            return re.search(pattern, client.username) is not None
        case (Atom("clientid" | "client"), str(name)):
            return client.clientid == name
        case (Atom("clientid" | "client"), (Atom("re"), str(pattern))):
            return re.search(pattern, client.clientid) is not None
        case (Atom("and"), list(parts)):
            return all(_who_matches(p, client) for p in parts)
        case (Atom("or"), list(parts)):
            return any(_who_matches(p, client) for p in parts)
    raise ValueError(f"who condition not modelled here: {who!r}")


def _render(template: str, client: Client) -> str:
    out = template.replace("${username}", client.username).replace("${clientid}", client.clientid)
    if "${" in out:
        raise ValueError(f"placeholder not modelled here: {template!r}")
    return out


def _topic_cond_matches(cond: Term, client: Client, topic: str) -> bool:
    match cond:
        case (Atom("eq"), str(exact)):
            return topic == exact
        case str(template):
            return emqx_match(topic, _render(template, client))
    raise ValueError(f"topic condition not modelled here: {cond!r}")


def compile_rules(terms: list[Term]) -> list[Rule]:
    rules = []
    for t in terms:
        match t:
            case (Atom("allow" | "deny") as perm, Atom("all")):
                rules.append(Rule(perm.name, Atom("all"), "all", ("#",)))
            case (
                Atom("allow" | "deny") as perm,
                who,
                Atom("publish" | "subscribe" | "all") as action,
                list(filters),
            ):
                rules.append(Rule(perm.name, who, action.name, tuple(filters)))
            case _:
                raise ValueError(f"rule not modelled here: {t!r}")
    return rules


@dataclass(frozen=True)
class EmqxAuthz:
    rules: list[Rule]
    no_match: str

    def allows(self, client: Client, action: str, topic: str) -> bool:
        checked = real_topic(topic) if action == "subscribe" else topic
        for rule in self.rules:
            if rule.matches(client, action, checked):
                return rule.permission == "allow"
        return self.no_match == "allow"


# ---- Mosquitto 2.0's acl_file, for concrete topics ----------------------------------


def mqtt_topic_matches(filter_: str, topic: str) -> bool:
    """mosquitto_topic_matches_sub for a concrete topic."""
    f, t = filter_.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return not (i == 0 and t[0].startswith("$"))
        if i >= len(t):
            return False
        if part == "+":
            if i == 0 and t[0].startswith("$"):
                return False
            continue
        if part != t[i]:
            return False
    return len(t) == len(f)


@dataclass(frozen=True)
class MosquittoAcl:
    user_topics: dict[str, list[tuple[str, str]]]
    patterns: list[tuple[str, str]]

    @classmethod
    def parse(cls, text: str) -> "MosquittoAcl":
        user_topics: dict[str, list[tuple[str, str]]] = {}
        patterns: list[tuple[str, str]] = []
        user: str | None = None
        for line in text.splitlines():
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "user":
                user = words[1]
                user_topics.setdefault(user, [])
                continue
            access, topic = (words[1], words[2]) if len(words) == 3 else ("readwrite", words[1])
            if words[0] == "topic" and user is not None:
                user_topics[user].append((access, topic))
            elif words[0] == "pattern":
                patterns.append((access, topic))
            else:
                raise ValueError(f"acl line not modelled here: {line!r}")
        return cls(user_topics, patterns)

    def allows(self, client: Client, access: str, topic: str) -> bool:
        """``access`` is ``read`` (delivery) or ``write`` (publish)."""
        if CLOUD_CN_RE.fullmatch(client.username):
            # The identity plugin (broker-config/plugin/) alone grants cloud workers:
            # read ctpl/v1/#, write ctpl/v1/<vid>/down/<kind>.
            if access == "read":
                return mqtt_topic_matches("ctpl/v1/#", topic)
            return mqtt_topic_matches("ctpl/v1/+/down/+", topic)
        grants = list(self.user_topics.get(client.username, []))
        grants += [
            (a, p.replace("%u", client.username).replace("%c", client.clientid))
            for a, p in self.patterns
        ]
        return any(a in (access, "readwrite") and mqtt_topic_matches(f, topic) for a, f in grants)


# ---- HOCON (the subset emqx.conf uses) ------------------------------------------------

Hocon: TypeAlias = dict[str, "HoconValue"]
HoconValue: TypeAlias = str | list["HoconValue"] | Hocon


class _HoconParser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def _blank(self, newlines: bool = True) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c in "\n,"):
                self.i += 1
            elif c == "#" or self.s.startswith("//", self.i):
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def _quoted(self) -> str:
        m = re.compile(r'"((?:[^"\\]|\\.)*)"').match(self.s, self.i)
        if m is None:
            raise ValueError(f"emqx.conf: bad string at {self.s[self.i : self.i + 30]!r}")
        self.i = m.end()
        return re.sub(r"\\(.)", r"\1", m[1])

    def object_body(self, close: str | None) -> Hocon:
        out: Hocon = {}
        while True:
            self._blank()
            if self.i >= len(self.s) or (close and self.s[self.i] == close):
                if close:
                    self.i += 1
                return out
            if self.s[self.i] == '"':
                path = [self._quoted()]
            else:
                m = re.compile(r"[A-Za-z0-9_.\-]+").match(self.s, self.i)
                if m is None:
                    raise ValueError(f"emqx.conf: bad key at {self.s[self.i : self.i + 30]!r}")
                self.i = m.end()
                path = m[0].split(".")
            self._blank(newlines=False)
            if self.s[self.i] in "=:":
                self.i += 1
                self._blank(newlines=False)
            elif self.s[self.i] != "{":
                raise ValueError(f"emqx.conf: expected = or {{ after {'.'.join(path)}")
            _merge(out, path, self.value())

    def value(self) -> HoconValue:
        c = self.s[self.i]
        if c == "{":
            self.i += 1
            return self.object_body("}")
        if c == "[":
            self.i += 1
            items: list[HoconValue] = []
            while True:
                self._blank()
                if self.s[self.i] == "]":
                    self.i += 1
                    return items
                items.append(self.value())
        if c == '"':
            return self._quoted()
        m = re.compile(r"[^\n,}\]#]+").match(self.s, self.i)
        if m is None:
            raise ValueError(f"emqx.conf: bad value at {self.s[self.i : self.i + 30]!r}")
        self.i = m.end()
        return m[0].strip()


def _merge(obj: Hocon, path: list[str], value: HoconValue) -> None:
    for key in path[:-1]:
        nxt = obj.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"emqx.conf: {key} is both a value and an object")
        obj = nxt
    old = obj.get(path[-1])
    if isinstance(old, dict) and isinstance(value, dict):
        for k, v in value.items():
            _merge(old, [k], v)
    else:
        obj[path[-1]] = value


def parse_hocon(text: str) -> Hocon:
    return _HoconParser(text).object_body(None)


def get(conf: HoconValue, dotted: str) -> HoconValue:
    for key in dotted.split("."):
        assert isinstance(conf, dict), f"{dotted}: {key} is not inside an object"
        assert key in conf, f"emqx.conf has no {dotted}"
        conf = conf[key]
    return conf


def leaves(conf: HoconValue, prefix: str = "") -> Iterator[str]:
    if isinstance(conf, dict):
        for k, v in conf.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(conf, list) and any(isinstance(v, dict) for v in conf):
        for v in conf:
            yield from leaves(v, prefix)
    else:
        yield prefix


# ---- Variform (the subset the cinfo checks use) ---------------------------------------


def variform(expr: str, bindings: dict[str, str]) -> str:
    """Evaluate a Variform expression of calls, 'strings' and variables to a string."""
    pos = 0

    def skip() -> None:
        nonlocal pos
        while pos < len(expr) and expr[pos] == " ":
            pos += 1

    def node() -> str:
        nonlocal pos
        skip()
        if expr[pos] in "'\"":
            end = expr.index(expr[pos], pos + 1)
            literal, pos = expr[pos + 1 : end], end + 1
            return literal
        m = re.compile(r"[a-z_][a-z0-9_.]*").match(expr, pos)
        if m is None:
            raise ValueError(f"variform: cannot read {expr[pos:]!r}")
        pos = m.end()
        skip()
        if pos < len(expr) and expr[pos] == "(":
            pos += 1
            args = []
            while True:
                args.append(node())
                skip()
                pos += 1
                if expr[pos - 1] == ")":
                    break
            return _variform_call(m[0], args)
        if m[0] in ("true", "false"):
            return m[0]
        return bindings.get(m[0], "")

    value = node()
    skip()
    if pos != len(expr):
        raise ValueError(f"variform: trailing {expr[pos:]!r}")
    return value


def _variform_call(name: str, args: list[str]) -> str:
    funcs: dict[str, Callable[[list[str]], bool]] = {
        "str_eq": lambda a: a[0] == a[1],
        "str_neq": lambda a: a[0] != a[1],
        "regex_match": lambda a: re.search(a[1], a[0]) is not None,
    }
    if name not in funcs:
        raise ValueError(f"variform function not modelled here: {name}")
    return "true" if funcs[name](args) else "false"


def cinfo_result(authenticator: HoconValue, cn: str, clientid: str) -> str:
    """The result of a cinfo authenticator: allow, deny, or ignore (no check matched)."""
    bindings = {"cert_common_name": cn, "username": cn, "clientid": clientid}
    checks = get(authenticator, "checks")
    assert isinstance(checks, list)
    for check in checks:
        exprs = get(check, "is_match")
        exprs = exprs if isinstance(exprs, list) else [exprs]
        if all(isinstance(e, str) and variform(e, bindings) == "true" for e in exprs):
            result = get(check, "result")
            assert isinstance(result, str)
            if result != "ignore":
                return result
    return "ignore"


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conf() -> Hocon:
    return parse_hocon(EMQX_CONF.read_text())


@pytest.fixture(scope="module")
def acl_terms() -> list[Term]:
    return parse_erlang_terms(ACL_CONF.read_text())


@pytest.fixture(scope="module")
def emqx(conf: Hocon, acl_terms: list[Term]) -> EmqxAuthz:
    no_match = get(conf, "authorization.no_match")
    assert isinstance(no_match, str)
    return EmqxAuthz(compile_rules(acl_terms), no_match)


@pytest.fixture(scope="module")
def mosquitto() -> MosquittoAcl:
    return MosquittoAcl.parse(MOSQUITTO_ACL.read_text())


def car(vid: str) -> Client:
    return Client(username=vid, clientid=vid)


def cloud_worker(n: int = 1) -> Client:
    return Client(username=CLOUD, clientid=f"ctpl-cloud-{n}")


def concrete_topics() -> list[str]:
    """Every topic of the contract for two cars, and near misses around them."""
    out = []
    for vid in (CAR_A, CAR_B):
        out += [topics.up(vid, k) for k in UP]
        out += [topics.down(vid, k) for k in DOWN]
        out += [topics.presence(vid)]
        out += [f"ctpl/v1/{vid}/{rest}" for rest in ("up", "down", "other", "up/status/x")]
        out += [f"ctpl/v2/{vid}/up/status", f"{vid}/up/status"]
    out += ["ctpl/v1/ctpl-cloud/up/status", "ctpl/v1", "ctpl", "other/topic", "$SYS/uptime"]
    return out


# ---- the model itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "filter_", "expected"),
    [
        ("ctpl/v1/vaaaaaaa1/up/status", "ctpl/v1/vaaaaaaa1/up/#", True),
        ("ctpl/v1/vaaaaaaa1/up", "ctpl/v1/vaaaaaaa1/up/#", True),
        ("ctpl/v1/+/up/#", "ctpl/v1/#", True),
        ("ctpl/v1/+/down/#", "ctpl/v1/vaaaaaaa1/down/#", False),
        ("#", "ctpl/v1/#", False),
        ("ctpl/v1/vaaaaaaa1/+/#", "ctpl/v1/vaaaaaaa1/down/#", False),
        ("$SYS/uptime", "#", False),
        ("$SYS/uptime", "+/uptime", False),
    ],
)
def test_the_model_matches_topics_as_emqx_does(name: str, filter_: str, expected: bool) -> None:
    assert emqx_match(name, filter_) is expected


def test_the_model_authorizes_a_shared_subscription_as_its_real_filter() -> None:
    assert real_topic(CLOUD_SHARED_SUBSCRIPTION) == "ctpl/v1/+/up/#"
    assert real_topic("$queue/ctpl/v1/#") == "ctpl/v1/#"
    assert real_topic(topics.down_filter(CAR_A)) == topics.down_filter(CAR_A)


# ---- acl.conf --------------------------------------------------------------------------


def test_acl_conf_is_five_rules_ending_in_deny_all(acl_terms: list[Term]) -> None:
    rules = compile_rules(acl_terms)
    assert len(rules) == 5
    assert acl_terms[-1] == (Atom("deny"), Atom("all"))
    assert [r.permission for r in rules] == ["allow", "allow", "allow", "allow", "deny"]


def test_acl_conf_uses_emqx5_placeholders_and_no_dead_share_rule() -> None:
    text = "\n".join(
        line for line in ACL_CONF.read_text().splitlines() if not line.lstrip().startswith("%")
    )
    assert "${username}" in text
    # Mosquitto's %u and EMQX 4's %u/%c are not placeholders in EMQX 5: they would be
    # matched literally and grant nothing (or, worse, something else).
    assert "%u" not in text and "%c" not in text
    # EMQX authorizes $share/<g>/<filter> as <filter>: a rule naming $share never matches.
    assert "$share" not in text


def test_every_concrete_topic_gets_the_mosquitto_verdict(
    emqx: EmqxAuthz, mosquitto: MosquittoAcl
) -> None:
    differences = []
    for client in (car(CAR_A), car(CAR_B), cloud_worker()):
        for topic in concrete_topics():
            for action, access in (("publish", "write"), ("subscribe", "read")):
                got = emqx.allows(client, action, topic)
                want = mosquitto.allows(client, access, topic)
                if got != want:
                    differences.append((client.username, action, topic, got, want))
    assert differences == []


def test_a_car_publishes_only_its_own_requests_and_presence(emqx: EmqxAuthz) -> None:
    a = car(CAR_A)
    for kind in UP:
        assert emqx.allows(a, "publish", topics.up(CAR_A, kind))
        assert not emqx.allows(a, "publish", topics.up(CAR_B, kind))
    assert emqx.allows(a, "publish", topics.presence(CAR_A))
    assert not emqx.allows(a, "publish", topics.presence(CAR_B))
    for down_kind in DOWN:
        # Only the cloud speaks on down/, a car not even on its own.
        assert not emqx.allows(a, "publish", topics.down(CAR_A, down_kind))
        assert not emqx.allows(a, "publish", topics.down(CAR_B, down_kind))


def test_a_car_subscribes_to_its_own_down_topics_and_presence(emqx: EmqxAuthz) -> None:
    a = car(CAR_A)
    assert emqx.allows(a, "subscribe", topics.down_filter(CAR_A))
    assert emqx.allows(a, "subscribe", topics.down(CAR_A, "policy"))
    assert emqx.allows(a, "subscribe", f"ctpl/v1/{CAR_A}/down/+")
    assert emqx.allows(a, "subscribe", topics.presence(CAR_A))


CAR_REFUSED_FILTERS = [
    "#",
    "+/#",
    "ctpl/#",
    "ctpl/v1/#",
    "ctpl/v1/+/down/#",
    "ctpl/v1/+/up/#",
    "ctpl/v1/+/presence",
    "ctpl/v1/+/+/+",
    f"ctpl/v1/{CAR_A}/#",
    f"ctpl/v1/{CAR_A}/+/#",
    f"ctpl/v1/{CAR_A}/up/#",
    f"ctpl/v1/{CAR_B}/down/#",
    f"ctpl/v1/{CAR_B}/down/policy",
    f"ctpl/v1/{CAR_B}/presence",
    "$SYS/#",
    CLOUD_SHARED_SUBSCRIPTION,
    "$share/cloud/ctpl/v1/#",
    f"$share/cloud/ctpl/v1/{CAR_A}/up/#",
    f"$share/cloud/ctpl/v1/{CAR_B}/down/#",
    f"$share/x/ctpl/v1/{CAR_B}/down/#",
    "$queue/ctpl/v1/+/up/#",
]


@pytest.mark.parametrize("filter_", CAR_REFUSED_FILTERS)
def test_a_car_cannot_subscribe_beyond_its_own_topics(emqx: EmqxAuthz, filter_: str) -> None:
    assert not emqx.allows(car(CAR_A), "subscribe", filter_)


def test_a_car_in_a_shared_group_of_its_own_topics_stays_within_them(emqx: EmqxAuthz) -> None:
    # Allowed, and harmless: authorized as its own down filter; EMQX keys a shared group by
    # group *and* filter, so this never joins the workers' group on ctpl/v1/+/up/#.
    assert emqx.allows(car(CAR_A), "subscribe", f"$share/cloud/ctpl/v1/{CAR_A}/down/#")


def test_the_cloud_reads_and_writes_every_car_through_its_shared_subscription(
    emqx: EmqxAuthz,
) -> None:
    for n in (1, 2):
        worker = cloud_worker(n)
        assert emqx.allows(worker, "subscribe", CLOUD_SHARED_SUBSCRIPTION)
        assert emqx.allows(worker, "subscribe", "ctpl/v1/#")
        for vid in (CAR_A, CAR_B):
            assert emqx.allows(worker, "publish", topics.down(vid, "policy"))
            assert emqx.allows(worker, "subscribe", topics.up(vid, "status"))
        for filter_ in ("#", "$SYS/#", "other/#", "$share/cloud/#"):
            assert not emqx.allows(worker, "subscribe", filter_)
        assert not emqx.allows(worker, "publish", "other/topic")
        assert not emqx.allows(worker, "publish", topics.up(CAR_A, "status"))
        assert not emqx.allows(worker, "publish", topics.presence(CAR_A))


@pytest.mark.parametrize("username", ["mallory", "v123", "ctpl-fleet", "VAAAAAAA1"])
def test_an_identity_that_is_neither_a_vid_nor_the_cloud_gets_nothing(
    emqx: EmqxAuthz, mosquitto: MosquittoAcl, username: str
) -> None:
    who = Client(username, username)
    for topic in (f"ctpl/v1/{username}/up/status", f"ctpl/v1/{username}/presence"):
        assert not emqx.allows(who, "publish", topic)
    assert not emqx.allows(who, "subscribe", f"ctpl/v1/{username}/down/#")
    # The tightening the README names: Mosquitto's pattern lines apply to any username.
    assert mosquitto.allows(who, "write", f"ctpl/v1/{username}/up/status")


# ---- emqx.conf ---------------------------------------------------------------------------


def test_only_the_mutual_tls_listener_on_8883_is_enabled(conf: Hocon) -> None:
    listeners = get(conf, "listeners")
    assert isinstance(listeners, dict)
    enabled = set()
    for kind, named in listeners.items():
        assert isinstance(named, dict)
        for name, listener in named.items():
            assert isinstance(listener, dict)
            if listener.get("enable", "true") != "false":
                enabled.add(f"{kind}.{name}")
    assert enabled == {"ssl.default"}
    # EMQX's built-in defaults open these; they must be switched off explicitly.
    for kind in ("tcp", "ws", "wss"):
        assert get(conf, f"listeners.{kind}.default.enable") == "false"
    bind = get(conf, "listeners.ssl.default.bind")
    assert isinstance(bind, str) and bind.endswith(":8883")


def test_the_listener_requires_checked_peer_certificates(conf: Hocon) -> None:
    ssl = "listeners.ssl.default.ssl_options"
    assert get(conf, f"{ssl}.verify") == "verify_peer"
    assert get(conf, f"{ssl}.fail_if_no_peer_cert") == "true"
    assert get(conf, f"{ssl}.enable_crl_check") == "true"
    assert get(conf, f"{ssl}.cacertfile")
    versions = get(conf, f"{ssl}.versions")
    assert isinstance(versions, list) and set(versions) <= {"tlsv1.2", "tlsv1.3"}
    assert get(conf, "listeners.ssl.default.tcp_options.nodelay") == "true"


def test_the_certificate_cn_is_the_username(conf: Hocon) -> None:
    assert get(conf, "mqtt.peer_cert_as_username") == "cn"


def test_authorization_is_the_file_acl_and_denies_by_default(conf: Hocon) -> None:
    assert get(conf, "authorization.no_match") == "deny"
    assert get(conf, "authorization.deny_action") in ("ignore", "disconnect")
    sources = get(conf, "authorization.sources")
    assert isinstance(sources, list) and len(sources) == 1
    assert get(sources[0], "type") == "file"
    assert get(sources[0], "enable") == "true"
    path = get(sources[0], "path")
    assert isinstance(path, str) and path.endswith("/acl.conf")


def _cinfo(conf: Hocon) -> HoconValue:
    chain = get(conf, "authentication")
    assert isinstance(chain, list) and len(chain) == 1
    assert get(chain[0], "mechanism") == "cinfo"
    assert get(chain[0], "enable") == "true"
    return chain[0]


@pytest.mark.parametrize(
    ("cn", "clientid", "expected"),
    [
        (CAR_A, CAR_A, "allow"),
        (CAR_A, CAR_B, "deny"),  # takeover of another car's session
        (CAR_A, f"{CAR_A}-2", "deny"),
        (CAR_A, "ctpl-cloud-1", "deny"),
        (CLOUD, "ctpl-cloud-1", "allow"),
        (CLOUD, "ctpl-cloud-2", "allow"),
        (CLOUD, CAR_A, "allow"),  # cloud/revocation.py kicks a car by taking its id over
        ("mallory", "mallory", "deny"),
        ("v123", "v123", "deny"),
    ],
)
def test_a_cars_client_id_must_be_its_vid_and_the_cloud_is_exempt(
    conf: Hocon, cn: str, clientid: str, expected: str
) -> None:
    # "ignore" would let the client in (the chain has no other authenticator).
    assert cinfo_result(_cinfo(conf), cn, clientid) == expected


def test_limits_are_mosquittos(conf: Hocon) -> None:
    mosq = dict(
        line.split(" ", 1)
        for line in MOSQUITTO_CONF.read_text().splitlines()
        if line.strip() and not line.startswith("#") and " " in line
    )
    assert get(conf, "mqtt.max_inflight") == mosq["max_inflight_messages"]
    assert get(conf, "mqtt.max_mqueue_len") == mosq["max_queued_messages"]
    assert get(conf, "mqtt.max_qos_allowed") == mosq["max_qos"]
    assert get(conf, "mqtt.server_keepalive") == mosq["max_keepalive"]
    assert get(conf, "mqtt.session_expiry_interval") == mosq["persistent_client_expiration"]
    assert get(conf, "mqtt.max_packet_size") == f"{int(mosq['max_packet_size']) // 1024}KB"
    assert get(conf, "mqtt.mqueue_store_qos0") == mosq["queue_qos0_messages"] == "false"
    assert get(conf, "mqtt.retain_available") == mosq["retain_available"] == "true"
    assert get(conf, "mqtt.shared_subscription") == "true"


def test_the_cluster_has_three_or_more_nodes(conf: Hocon) -> None:
    strategy = get(conf, "cluster.discovery_strategy")
    if strategy == "static":
        seeds = get(conf, "cluster.static.seeds")
        assert isinstance(seeds, list) and len(set(seeds)) >= 3
    else:
        assert strategy == "dns" and get(conf, "cluster.dns.name")


def test_no_secret_or_per_node_value_is_in_the_shared_file(conf: Hocon) -> None:
    node = get(conf, "node")
    assert isinstance(node, dict)
    assert "cookie" not in node and "name" not in node
    bind = get(conf, "dashboard.listeners.http.bind")
    assert isinstance(bind, str) and bind.startswith("127.0.0.1:")


def test_the_readme_explains_every_setting(conf: Hocon) -> None:
    readme = README.read_text()
    unexplained = [
        path
        for path in leaves(conf)
        if not re.search(r"`[^`\n]*\b" + re.escape(path.rsplit(".", 1)[-1]) + r"\b[^`\n]*`", readme)
    ]
    assert unexplained == []
