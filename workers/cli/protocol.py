"""`rxgate protocol check FILE` and `rxgate explain RULE`: for the pharmacist who reviews a protocol."""

from __future__ import annotations

import argparse

from validator import ProtocolError, load_protocol
from validator.protocol import Protocol, bundled_ids
from validator.rules import DOSE_RULES
from workers.cli.usage import UsageError


def register(sub) -> None:
    protocol = sub.add_parser("protocol", help="protocol files: check one and print what it enforces")
    actions = protocol.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate a protocol file (or bundled id) and summarise it")
    check.add_argument("ref", metavar="FILE_OR_ID")
    check.set_defaults(func=cmd_protocol_check)
    listing = actions.add_parser("list", help="list the bundled protocols")
    listing.set_defaults(func=lambda args: print("\n".join(bundled_ids())) or 0)

    explain = sub.add_parser("explain", help="print a rule's documentation and the parameters it reads")
    explain.add_argument("rule", metavar="RULE", nargs="?", help="rule id, e.g. go.dose (none: list all)")
    explain.add_argument("--protocol", help="show parameter values from this protocol")
    explain.add_argument("--markdown", action="store_true", help="print the whole rule catalogue as Markdown (docs/rules.md)")
    explain.set_defaults(func=cmd_explain)


def cmd_protocol_check(args: argparse.Namespace) -> int:
    try:
        protocol = load_protocol(args.ref)
    except ProtocolError as exc:
        print(f"INVALID: {exc}")
        return 1
    print(summary(protocol))
    return 0


def summary(p: Protocol) -> str:
    """What the protocol enforces, in words a pharmacist can review."""
    cap = f", at most {p.dose.max_mg_per_dose} mg per dose" if p.dose.max_mg_per_dose is not None else ""
    lines = [
        f"OK: {p.id} (version {p.version[:12]})",
        f"  {p.title}",
        f"  status: {p.status}",
        f"  GO orders: RxNorm {', '.join(p.drug.rxnorm) or '-'}; NDC {', '.join(p.drug.ndc) or '-'}; "
        f"text containing {', '.join(p.drug.text_contains) or '-'}",
        f"  eligibility: age >= {p.eligibility.min_age_years} y; pediatric doses below {p.eligibility.pediatric_below_years} y",
        f"  dose: {p.dose.mg_per_m2} mg/m2 (Mosteller BSA) +/- {p.dose.tolerance_percent} %{cap}; "
        f"BSA OBX cross-check {p.dose.bsa_crosscheck_percent} %",
        f"  route: {', '.join(p.route.codes)}",
        f"  infusion: {p.infusion.minutes} +/- {p.infusion.tolerance_minutes} min; sources agree within "
        f"{p.infusion.max_source_disagreement_minutes} min",
        f"  schedule: course days {', '.join(map(str, p.schedule.days))} (+/- {p.schedule.tolerance_days} d), "
        f"at most {p.schedule.max_doses} doses per {p.schedule.course_days}-day course",
        f"  premedication (dose +/- {p.premedication.dose_tolerance_percent} %, belongs within "
        f"{p.premedication.belongs_within_hours} h of the GO start):",
    ]
    for pm in p.premedication.required:
        def dose(rule) -> str:
            parts = [f"{rule.mg} mg" if rule.mg is not None else "", f"{rule.mg_per_kg} mg/kg" if rule.mg_per_kg is not None else "",
                     f"max {rule.max_mg} mg" if rule.max_mg is not None else ""]
            return " ".join(x for x in parts if x) or "-"
        eq = f"; or {', '.join(f'{e.name} x{e.potency_ratio}' for e in pm.equivalents)}" if pm.equivalents else ""
        lines.append(
            f"    {pm.name}: adult {dose(pm.adult)}, pediatric {dose(pm.pediatric)}, {'/'.join(pm.routes)}, "
            f"{pm.window.min_minutes_before}-{pm.window.max_minutes_before} min before{eq}"
        )
    lines += [
        f"  CD33: >= {p.cd33.min_percent} % of blasts, final, within {p.cd33.max_age_days} days",
        f"  WBC: within {p.wbc.max_age_hours} h; >= {p.wbc.threshold_10e9_per_l} x10^9/L needs cytoreduction "
        f"within {p.wbc.cytoreduction.within_days_before} days before",
        f"  liver ({p.liver.severity}): " + ", ".join(f"{t.name} > {t.max_uln_multiple} x ULN" for t in p.liver.tests)
        + f", within {p.liver.max_age_hours} h",
        f"  HSCT ({p.hsct.severity}): at least {p.hsct.min_days_after_last_dose} days after the last dose",
    ]
    return "\n".join(lines)


MESSAGE_RULES = {
    "go.patient": "The message has no patient identifier (PID-3): every GO order is refused, since the course "
                  "history cannot be used without it.",
    "go.observation_time": "An observation dated after the message time (MSH-7, else the time received) plus "
                           "`observations.future_tolerance_minutes` is invalid data: ignored, with a warning.",
    "go.orderset": "A premedication that belongs to a refused GO dose is refused with it.",
    "go.scope": "An order that is not a GO order is accepted without protocol checks (info).",
    "go.cancel": "A CA/DC request for an order not known as accepted (same patient, sender and ORC-2): UC/UD, AE; "
                 "an info when a cancelled GO dose had already started and stays in the course history.",
    "go.protocol": "The order names a protocol code (RXGATE_PROTOCOL_FIELD) that the service does not know.",
    "hl7.order_control": "ORC-1 other than NW, XO, RP (new orders) or CA, DC (cancellations): the order is refused.",
    "hl7.structure / hl7.message_type / hl7.trigger_event / hl7.version / hl7.control_id / hl7.size": "The "
        "message as a whole is rejected (AR) with a table 0357 code: 100/101/102 structure, 200/201/203 "
        "unsupported type/event/version, 207 otherwise.",
    "hl7.processing_id": "MSH-11 other than P (production), T (training) or D (debugging), or a processing mode "
                         "(MSH-11.2) other than empty or T: AR, ERR-3 202. T and D messages are judged like P ones "
                         "but keep their own message keys, order identities and course histories.",
    "hl7.duplicate_control_id": "The message key (MSH-11, MSH-3, MSH-4, MSH-10) was already used for other content "
                                "(after emptying MSH-7 and trailing empty fields): AR, ERR-3 205. The same content "
                                "again gets the stored answer byte for byte.",
    "rxgate.internal_error": "An internal error while judging: AR 207, logged with the control id; never silence. "
                             "A CDS Hooks call answers it as a critical card (audited, logged with the hookInstance).",
    "rxgate.fhir": "CDS Hooks: a FHIR resource rxgate cannot use (not valid FHIR R4, another patient's, a medication "
                   "that cannot be read): an error card, and the resource is left out of the judgement. A GO "
                   "MedicationRequest whose timing plans more than one administration is refused by `go.schedule` "
                   "(\"one order per dose: this order plans more than one start\").",
    "rxgate.timeout": "MLLP: no verdict within RXGATE_MLLP_TIMEOUT: AR 207 on that connection only (not stored, "
                      "published or audited); the message stays queued and a resend with the same control id gets "
                      "its verdict.",
    "service.not_processed": "Not processed after its retries (or not taken by the broker): AR 207 \"not processed, "
                             "resend\", kept on the dead-letter stream, not audited and not stored under the message "
                             "key, so a resend is processed afresh. A queue entry without an hl7 field is answered "
                             "\"cannot be processed: no hl7 field\" instead (a resend cannot help); an operator "
                             "drops it (`rxgate deadletter drop`).",
    "rxgate.deadletter_drop": "Audit only (info, never in ERR-5): an operator dropped a dead letter "
                              "(`rxgate deadletter drop ID --reason TEXT`): who, why, the dead-letter id and reason.",
}


def rules_markdown(protocol: Protocol) -> str:
    """docs/rules.md: every rule's documentation and the parameters it reads, with the bundled default values."""
    out = [
        "# Rules",
        "",
        f"Generated by `rxgate explain --markdown` from the rule modules (`validator/rules/`); parameter values "
        f"are those of the default protocol `{protocol.id}`. Do not edit by hand.",
        "",
        "Rules run on every GO dose, in this order; an `error` refuses the order.",
        "",
    ]
    for rule in DOSE_RULES:
        doc = rule.doc.strip().split(" — ", 1)[-1]
        out += [f"## `{rule.id}`", "", doc[:1].upper() + doc[1:], ""]
        if rule.parameters:
            out += ["Parameters:", ""]
            out += [f"- `{name}` = `{_lookup(protocol, name)}`" for name in rule.parameters]
            out.append("")
    out += ["## Message and order rules", ""]
    out += [f"- `{rid}` — {text}" for rid, text in MESSAGE_RULES.items()]
    return "\n".join(out) + "\n"


def cmd_explain(args: argparse.Namespace) -> int:
    rules = {r.id: r for r in DOSE_RULES}
    if args.markdown:
        try:
            print(rules_markdown(load_protocol(args.protocol)), end="")
        except ProtocolError as exc:
            raise UsageError(str(exc)) from None
        return 0
    if not args.rule:
        for rule in DOSE_RULES:
            first = rule.doc.strip().splitlines()[0] if rule.doc.strip() else ""
            print(f"{rule.id:<20} {first.split(' — ', 1)[-1]}")
        return 0
    rule = rules.get(args.rule)
    if rule is None:
        # message-level rules (MESSAGE_RULES): one text may document several ids ("a / b / c")
        text = next((t for ids, t in MESSAGE_RULES.items() if args.rule in ids.split(" / ")), None)
        if text is not None:
            print(f"{args.rule} — {text}")
            return 0
        raise UsageError(f"unknown rule {args.rule!r}; known: {', '.join(rules)}")
    print(rule.doc.strip())
    if rule.parameters:
        print("\nParameters read" + (f" (values from {args.protocol})" if args.protocol else "") + ":")
        protocol = None
        if args.protocol:
            try:
                protocol = load_protocol(args.protocol)
            except ProtocolError as exc:
                raise UsageError(str(exc)) from None
        for name in rule.parameters:
            value = _lookup(protocol, name) if protocol else ""
            print(f"  {name}" + (f" = {value}" if protocol else ""))
    return 0


def _lookup(protocol: Protocol, dotted: str):
    value = protocol
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return "(not set)"
    return value
