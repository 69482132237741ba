"""The registrar: enrollment, renewal, revocation, fleets and claims, over the store.

The HTTP shell (``cloud.api``) hands it parsed requests and the caller's bearer token;
it runs the pure checks of ``enrollment`` in contract order, issues certificates with
the device CA, writes one transaction per change, then tells ``events``. Every refusal
raises ``Refused`` before anything is stored.
"""

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography import x509

from agent.protocol import envelope
from agent.protocol.clock import Clock
from agent.protocol.errors import ProtocolError
from agent.protocol.keys import PublicKey, load_private_key
from agent.protocol.topics import VID_RE

from . import enrollment as en
from .config import CloudConfig
from .errors import ConfigError, Refused
from .keyset import build_keyset
from .pki import CertificateAuthority, cert_pem
from .signing_keys import SigningKeys, load_signing_keys
from .store import Store, VinHeld

log = logging.getLogger(__name__)
HOOK_TIMEOUT_S: Final = 10.0
_BACKDATE: Final = dt.timedelta(minutes=5)


class VehicleEvents(Protocol):
    """What the API tells the rest of the process after it has committed a change."""

    async def vehicle_registered(self, vid: str, key: PublicKey) -> None:
        """``vid`` enrolled or renewed: its messages now verify with ``key``."""
        ...

    async def vehicle_revoked(self, vid: str) -> None:
        """``vid`` was revoked in the store: refuse its messages, CRL it, disconnect it."""
        ...

    async def insurer_webhook(
        self, code: str, body: bytes, timestamp: str | None, signature: str | None
    ) -> tuple[int, dict[str, str]]:
        """An insurer's signed delivery (payment done): the HTTP status and JSON answer."""
        ...

    async def force_refresh(self, vid: str) -> str:
        """Re-query ``vid``'s policy sources now: ``updated``, ``unchanged`` or ``unavailable``."""
        ...

    async def operator_renewal(self, vid: str, intent_id: str) -> bool:
        """Start a renewal (quote) for ``vid`` as if the car had asked; False if ``intent_id``
        was already recorded (nothing new started)."""
        ...


class NoEvents:
    """Events that go nowhere: an API running without a worker beside it."""

    async def vehicle_registered(self, vid: str, key: PublicKey) -> None:
        """Nothing to tell."""

    async def vehicle_revoked(self, vid: str) -> None:
        """Nothing to tell."""

    async def insurer_webhook(
        self, code: str, body: bytes, timestamp: str | None, signature: str | None
    ) -> tuple[int, dict[str, str]]:
        """No worker to take it: try again later."""
        return 503, {"error": "not_ready", "message": "no renewal worker in this process"}

    async def force_refresh(self, vid: str) -> str:
        """No worker to ask the sources."""
        raise Refused(503, "not_ready", "no policy worker in this process")

    async def operator_renewal(self, vid: str, intent_id: str) -> bool:
        """No worker to start a renewal."""
        raise Refused(503, "not_ready", "no renewal worker in this process")


@dataclass
class Registrar:
    """Carries out the API's requests; ``load`` builds one from the config's key files."""

    config: CloudConfig
    store: Store
    events: VehicleEvents
    clock: Clock
    ca: CertificateAuthority
    ca_pem: str
    keyset: str
    admin_digest: bytes | None
    counters: Counter[str] = field(default_factory=Counter)

    @classmethod
    def load(
        cls,
        config: CloudConfig,
        store: Store,
        events: VehicleEvents,
        clock: Clock,
        signing_keys: SigningKeys | None = None,
    ) -> "Registrar":
        """Read the CA, root and signing keys named in ``config``; ConfigError if unusable.

        The key set lists every key of the signing-key ring (``signing_keys`` if given,
        else read from the config) with its cut-off, under the ring's version.
        """
        if config.ca_key_file is None or config.root_key_file is None:
            raise ConfigError(None, "the API needs ca_key_file and root_key_file")
        try:
            ca = CertificateAuthority.load(config.ca_file, config.ca_key_file)
            root = envelope.Signer(load_private_key(config.root_key_file))
        except (OSError, ValueError) as exc:
            raise ConfigError(None, f"cannot load the API's keys: {exc}") from exc
        ring = signing_keys or load_signing_keys(config)
        admin = config.admin_token.get_secret_value() if config.admin_token else ""
        return cls(
            config=config,
            store=store,
            events=events,
            clock=clock,
            ca=ca,
            ca_pem=cert_pem(ca.cert).decode("ascii"),
            keyset=build_keyset(root, ring.listed(), version=ring.version, issued_at=clock.now()),
            admin_digest=en.token_digest(admin) if admin else None,  # empty: no admin
        )

    async def authorize(self, token: str | None, fleet: en.FleetRow | None) -> bool:
        """Pass the admin (True) or ``fleet``'s operator (False); else 401, or 403 if another's."""
        if token is None:
            raise Refused(401, "unauthorized", "a bearer token is needed")
        digest = en.token_digest(token)
        if self.admin_digest is not None and en.digests_match(digest, self.admin_digest):
            return True
        if fleet is not None and en.digests_match(digest, fleet.operator_digest):
            return False
        if await self.store.fleet_of_operator(digest) is not None:
            raise Refused(403, "forbidden", "this operator token is for another fleet")
        raise Refused(401, "unauthorized", "unknown token")

    def issue(self, vid: str, key: PublicKey, now: dt.datetime) -> x509.Certificate:
        """A client certificate for ``vid`` (CN = vid) over ``key``."""
        return self.ca.issue(vid, key, days=self.config.cert_days, not_before=now - _BACKDATE)

    def answer(self, vid: str, cert: x509.Certificate) -> en.Enrollment:
        """The Enrollment answer for ``vid``'s new certificate."""
        host, port = self.config.advertised_broker
        return en.Enrollment(
            vid=vid,
            certificate_pem=cert_pem(cert).decode("ascii"),
            ca_chain_pem=self.ca_pem,
            not_after=cert.not_valid_after_utc,
            broker_host=host,
            broker_port=port,
            keyset=self.keyset,
        )

    async def tell(self, what: str, call: Awaitable[None]) -> bool:
        """Await an events hook under a timeout; log and count a failure instead of raising."""
        try:
            async with asyncio.timeout(HOOK_TIMEOUT_S):
                await call
        except Exception:
            log.exception("events hook %s failed", what)
            self.counters[f"hook_failed.{what}"] += 1
            return False
        return True

    async def enroll(self, req: en.EnrollRequest) -> en.Enrollment:
        """Enroll a gateway: checks in contract order, then one transaction, then the hook."""
        now = self.clock.now()
        digest = en.token_digest(req.claim_token)
        claim = en.check_claim(await self.store.claim(digest), now, req.fleet_id)
        key = en.check_csr(req.csr_pem)
        vin = en.check_vin(req.vin)
        vid = en.assign_vid()
        cert = self.issue(vid, key, now)
        try:
            stored = await self.store.enroll(
                claim_digest=digest,
                vid=vid,
                fleet_id=claim.fleet_id,
                key=key,
                vin=vin,
                serial=cert.serial_number,
                not_after=cert.not_valid_after_utc,
                now=now,
            )
        except VinHeld:
            # Whose it is, and anything about that car, stays unsaid: the owning fleet
            # releases it (revokes its gateway) before another may enroll it.
            raise Refused(
                409, "vin_held", "this VIN is enrolled already; its fleet must release it first"
            ) from None
        if not stored:
            raise Refused(409, "claim_used", "this claim token was used meanwhile")
        self.counters["enrolled"] += 1
        await self.tell("vehicle_registered", self.events.vehicle_registered(vid, key))
        return self.answer(vid, cert)

    async def renew(self, req: en.RenewRequest) -> en.Enrollment:
        """Renew a certificate on a request signed by one of the vehicle's current keys."""
        now = self.clock.now()
        try:
            env = envelope.parse(en.envelope_bytes(req.envelope))
        except ProtocolError as exc:
            raise Refused(422, exc.code, str(exc)) from None
        vid = en.claimed_vid(env.body)
        vehicle = await self.store.vehicle(vid)
        if vehicle is None:
            raise Refused(404, "vehicle_unknown", "no such vehicle")
        keys = await self.store.vehicle_keys(vid, now)
        key = keys.get(env.kid)
        if key is None:
            raise Refused(401, "unknown_key", "the envelope's kid is not this vehicle's key")
        try:
            body = env.verify(en.renew_topic(vid), key)
        except ProtocolError as exc:
            raise Refused(401, exc.code, str(exc)) from None
        renewal = en.check_renewal(body, vehicle)
        new_key = en.check_csr(renewal.csr_pem)
        cert = self.issue(vid, new_key, now)
        stored = await self.store.renew(
            vid=vid,
            seq=renewal.seq,
            key=new_key,
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
            now=now,
        )
        if not stored:
            raise Refused(409, "replay", "revoked or renewed with this seq meanwhile")
        self.counters["renewed"] += 1
        await self.tell("vehicle_registered", self.events.vehicle_registered(vid, new_key))
        return self.answer(vid, cert)

    async def revoke(self, token: str | None, vid: str) -> en.Revoked:
        """Revoke ``vid`` for its fleet's operator or the admin; idempotent, hook every time."""
        well_formed = VID_RE.fullmatch(vid) is not None
        vehicle = await self.store.vehicle(vid) if well_formed else None
        fleet_id = vehicle.fleet_id if vehicle is not None else None
        fleet = await self.store.fleet(fleet_id) if fleet_id is not None else None
        await self.authorize(token, fleet)
        en.check_vid(vid)
        revoked_at = await self.store.revoke(vid, self.clock.now()) if vehicle is not None else None
        if revoked_at is None:
            raise Refused(404, "vehicle_unknown", "no such vehicle")
        self.counters["revoked"] += 1
        if not await self.tell("vehicle_revoked", self.events.vehicle_revoked(vid)):
            # Stored, but the broker may still let the car in: the caller must retry.
            raise Refused(500, "revocation_incomplete", "revoked in the store; retry to finish")
        return en.Revoked(vid=vid, revoked_at=revoked_at)

    async def create_claims(
        self, token: str | None, fleet_id: str, req: en.ClaimsCreate
    ) -> en.ClaimsCreated:
        """Mint one-time claim tokens for ``fleet_id``; only their digests are stored."""
        well_formed = en.FLEET_ID_RE.fullmatch(fleet_id) is not None
        fleet = await self.store.fleet(fleet_id) if well_formed else None
        await self.authorize(token, fleet)
        en.check_fleet_id(fleet_id)
        if fleet is None:
            raise Refused(404, "fleet_unknown", "no such fleet")
        tokens = [en.new_token(en.CLAIM_PREFIX) for _ in range(req.count)]
        expires_at = self.clock.now() + dt.timedelta(seconds=req.expires_in_s)
        await self.store.add_claims(fleet_id, [en.token_digest(t) for t in tokens], expires_at)
        self.counters["claims_minted"] += req.count
        return en.ClaimsCreated(claim_tokens=tokens, expires_at=expires_at)

    async def create_fleet(self, token: str | None, req: en.FleetCreate) -> en.FleetCreated:
        """Add a fleet (admin only) and show its operator token once."""
        await self.authorize(token, None)
        fleet_id, operator = en.new_fleet_id(), en.new_token(en.OPERATOR_PREFIX)
        await self.store.create_fleet(
            fleet_id, req.name, en.token_digest(operator), self.clock.now()
        )
        self.counters["fleets_created"] += 1
        return en.FleetCreated(fleet_id=fleet_id, operator_token=operator)
