"""The parts of the head unit's snapshot, as JSON-ready data in both languages (pure).

Each takes only verified data: a prompt the engine decided, a verified renewal update, a
verified policy state (its fields masked at the cloud). The shape is docs/head-unit.md.
"""

from dataclasses import dataclass
from typing import Any

from . import reminders, texts
from .protocol.messages import PolicyState, RenewalUpdate
from .reminders import Prompt


@dataclass(frozen=True, slots=True)
class OnScreen:
    """The prompt on screen: its number in the store (the id answers name) and the
    engine's decision."""

    n: int
    prompt: Prompt


def prompt_json(on: OnScreen | None) -> dict[str, Any] | None:
    """The prompt on screen, if any."""
    if on is None:
        return None
    p = on.prompt
    return {
        "id": on.n,
        "stage": p.stage,
        "days_left": p.days_left,
        "coverage_end": p.coverage_end.isoformat(),
        "answers": list(reminders.answers_for(p.stage)),
        "texts": {
            lang: texts.prompt_text(
                p.stage, p.days_left, p.coverage_end, p.insurer, lang, starts_at=p.starts_at
            )
            for lang in texts.LANGS
        },
    }


def renewal_json(renewal: RenewalUpdate | None) -> dict[str, Any] | None:
    """Quotes to compare, a payment link as a QR code, or the result."""
    if renewal is None:
        return None
    shown: dict[str, Any] = {
        "renewal_id": renewal.renewal_id,
        "stage": renewal.stage,
        "quotes": [
            {
                "quote_id": q.quote_id,
                "insurer": q.insurer_name,
                "insurer_code": q.insurer_code,
                "start": q.start.isoformat(),
                "end": q.end.isoformat(),
                "start_rule": q.start_rule or "midnight",
                "ctpl": q.ctpl,
                "floating_rate": q.floating_rate,
                "rate_basis": q.rate_basis,
                "vehicle_vessel_tax": q.vehicle_vessel_tax,
                "tax_exemption": q.tax_exemption,
                "total": q.total,
                "claims_phone": q.claims_phone,
                "expires_at": q.expires_at.isoformat(),
                "texts": {lang: texts.quote_text(q, lang) for lang in texts.LANGS},
            }
            for q in renewal.quotes
        ],
        "amount": renewal.amount,
        "new_end": None if renewal.new_end is None else renewal.new_end.isoformat(),
        "new_starts_at": None
        if renewal.new_starts_at is None
        else renewal.new_starts_at.isoformat(),
        "reason": renewal.reason,
        "message": renewal.message,
        "payment_url": None,
        "payment_qr": None,
    }
    if renewal.stage == "awaiting_payment" and renewal.payment_url is not None:
        shown["payment_url"] = renewal.payment_url
        shown["payment_qr"] = qr_svg_data_uri(renewal.payment_url)
    shown["texts"] = {
        lang: texts.renewal_text(renewal.stage, lang, amount=renewal.amount,
                                 new_end=renewal.new_end, new_starts_at=renewal.new_starts_at,
                                 reason=renewal.reason, retry_after_s=renewal.retry_after_s)
        for lang in texts.LANGS
    }  # fmt: skip
    return shown


def card_json(state: PolicyState | None) -> dict[str, Any] | None:
    """The offline e-policy card: the verified state's own fields (masked at the cloud)."""
    if state is None or state.coverage_end is None or state.policy_no_masked is None:
        return None
    card: dict[str, Any] = {
        "policy_no": state.policy_no_masked,
        "plate": state.plate_masked,
        "start": None if state.coverage_start is None else state.coverage_start.isoformat(),
        "starts_at": None if state.starts_at is None else state.starts_at.isoformat(),
        "end": state.coverage_end.isoformat(),
        "insurer": state.insurer_name or state.insurer_code,
        "insurer_address": state.insurer_address,
        "claims_phone": state.claims_phone,
        "verified_at": None if state.verified_at is None else state.verified_at.isoformat(),
    }
    card["texts"] = {lang: texts.card_text(card, lang) for lang in texts.LANGS}
    return card


def qr_svg_data_uri(url: str) -> str:
    """A QR code of ``url`` as an SVG data URI (segno is imported only here, when needed)."""
    import segno

    return str(segno.make(url, error="m").svg_data_uri(scale=6, border=2))
