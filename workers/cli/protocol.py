"""`rxgate protocol check FILE` and `rxgate explain RULE`: for the pharmacist who reviews a protocol."""

from __future__ import annotations

import argparse

from validator import ProtocolError, load_protocol
from validator.protocol import Protocol, bundled_ids
from validator.rules import DOSE_RULES
from validator.rules.messages import MESSAGE_RULES, message_rule
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
        f"  route: {', '.join(p.route.codes)} by code first (RXR-1.3 {', '.join(p.code_systems.route_table)} or empty); "
        f"text {', '.join(p.route.text_contains) or '-'} only when the code is empty; other systems: "
        + ("; ".join(f"{'/'.join(r.systems)} {r.code} -> {r.route}" for r in p.route_codes) or "none (unreadable)"),
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
        f"  observations: valid up to {p.observations.future_tolerance_minutes} min after MSH-7 (exact instants; "
        "coarse or daylight-saving-ambiguous times at the less favourable reading)",
        f"  overridable: {', '.join(p.overridable) or 'none'}; override verifiers (ORC-11): "
        f"{', '.join(p.override_verifiers) or 'none'}",
    ]
    return "\n".join(lines)




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
    out += [f"- {' / '.join(f'`{rid}`' for rid in rule.ids)} — {rule.doc}" for rule in MESSAGE_RULES]
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
        for message_level in MESSAGE_RULES:
            print(f"{' / '.join(message_level.ids):<20} {message_level.doc.split(': ', 1)[0].split('. ', 1)[0]}")
        return 0
    rule = rules.get(args.rule)
    if rule is None:
        message_level = message_rule(args.rule)  # validator/rules/messages.py
        if message_level is not None:
            print(f"{args.rule} — {message_level.doc}")
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
