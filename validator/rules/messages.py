"""Rules about a message or an order as a whole, declared like the dose rules (`validator/rules/__init__.py`).

Every rule id that can appear in a finding or in ERR-5 is either a dose rule (`DOSE_RULES`) or one of these;
`rxgate explain` and docs/rules.md read both, and a test checks that every id the code can emit is here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MessageRule:
    """A catalogue entry for one or several ids that share a text (`hl7.version`, `hl7.size`, ...)."""

    ids: tuple[str, ...]
    doc: str


MESSAGE_RULES: tuple[MessageRule, ...] = (
    MessageRule(
        ("go.patient",),
        "The message has no patient identifier (PID-3): every GO order is refused, since the course history "
        "cannot be used without it.",
    ),
    MessageRule(
        ("go.observation_time",),
        "An observation dated after the message time (MSH-7, else the time received) plus "
        "`observations.future_tolerance_minutes` is invalid data: ignored, with a warning.",
    ),
    MessageRule(
        ("go.orderset",),
        "A premedication that belongs to a refused GO dose is refused with it.",
    ),
    MessageRule(
        ("go.scope",),
        "An order that is not a GO order is accepted without protocol checks (info).",
    ),
    MessageRule(
        ("go.cancel",),
        "A CA/DC request for an order not known as accepted (same patient, sender and ORC-2): UC/UD, AE; an "
        "info when a cancelled GO dose had already started and stays in the course history.",
    ),
    MessageRule(
        ("go.protocol",),
        "The order names a protocol code (RXGATE_PROTOCOL_FIELD) that the service does not know.",
    ),
    MessageRule(
        ("go.override",),
        "An override with a reason (NTE `RXGATE-OVERRIDE <rule id>: <reason>` directly after the RXE/RXO) of a rule "
        "the order's protocol does not mark `overridable`, without a reason, or without an ORC-11 verifier listed "
        "in `override_verifiers`: the order is refused. A valid one turns that rule's errors into warnings (never "
        "a premedication above its maximum, never go.orderset).",
    ),
    MessageRule(
        ("hl7.order_control",),
        "ORC-1 other than NW, XO, RP (new orders) or CA, DC (cancellations): the order is refused.",
    ),
    MessageRule(
        ("hl7.structure", "hl7.message_type", "hl7.trigger_event", "hl7.version", "hl7.control_id", "hl7.size"),
        "The message as a whole is rejected (AR) with a table 0357 code: 100/101/102 structure, 200/201/203 "
        "unsupported type/event/version, 207 otherwise.",
    ),
    MessageRule(
        ("hl7.processing_id",),
        "MSH-11 other than P (production), T (training) or D (debugging), or a processing mode (MSH-11.2) "
        "other than empty or T: AR, ERR-3 202. T and D messages are judged like P ones but keep their own "
        "message keys, order identities and course histories.",
    ),
    MessageRule(
        ("hl7.duplicate_control_id",),
        "The message key (MSH-11, MSH-3, MSH-4, MSH-10) was already used for other content (after emptying "
        "MSH-7 and trailing empty fields): AR, ERR-3 205. The same content again gets the stored answer "
        "byte for byte.",
    ),
    MessageRule(
        ("rxgate.internal_error",),
        "An internal error while judging: AR 207, logged with the control id; never silence. A CDS Hooks "
        "call answers it as a critical card (audited, logged with the hookInstance).",
    ),
    MessageRule(
        ("rxgate.fhir",),
        "CDS Hooks: a FHIR resource rxgate cannot use (not valid FHIR R4, another patient's, a medication "
        "that cannot be read): an error card, and the resource is left out of the judgement. A GO "
        "MedicationRequest whose timing plans more than one administration is refused by `go.schedule` "
        "(\"one order per dose: this order plans more than one start\").",
    ),
    MessageRule(
        ("rxgate.timeout",),
        "MLLP: no verdict within RXGATE_MLLP_TIMEOUT: AR 207 on that connection only (not stored, published "
        "or audited); the message stays queued and a resend with the same control id gets its verdict.",
    ),
    MessageRule(
        ("service.not_processed",),
        "Not processed after its retries (or not taken by the broker): AR 207 \"not processed, resend\", kept on "
        "the dead-letter stream, not audited and not stored under the message key, so a resend is processed "
        "afresh. A queue entry without an hl7 field is answered \"cannot be processed: no hl7 field\" instead (a "
        "resend cannot help); an operator drops it (`rxgate deadletter drop`).",
    ),
    MessageRule(
        ("go.resent",),
        "A new order (ORC-1 NW or empty) whose identity (patient, sender, processing id, ORC-2 with "
        "namespace) is an accepted order's, with every value a rule reads equal after normalisation: "
        "answered OK with this info naming the accepted message's control id, not judged again, counted "
        "once.",
    ),
    MessageRule(
        ("go.duplicate_order",),
        "A new order whose identity is an accepted order's, with any other content (or an order accepted "
        "before rxgate kept order contents): refused, \"change it with XO or cancel it\". Its premedications "
        "are refused with it (go.orderset).",
    ),
    MessageRule(
        ("rxgate.deadletter_drop",),
        "Audit only (info, never in ERR-5): an operator dropped a dead letter (`rxgate deadletter drop ID "
        "--reason TEXT`): who, why, the dead-letter id and reason.",
    ),
    MessageRule(
        ("rxgate.anchor",),
        "Audit only (info, never in ERR-5): the first record of a database seeded by `rxgate audit seed`, "
        "naming the old audit log's head SEQ:HASH and how many course history rows and message keys "
        "were copied into it (docs/interfaces.md §5 \"Retention\").",
    ),
)


def message_rule(rule_id: str) -> MessageRule | None:
    """The entry documenting `rule_id`, or None."""
    return next((r for r in MESSAGE_RULES if rule_id in r.ids), None)
