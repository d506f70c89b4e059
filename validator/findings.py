"""Findings: what a rule says about an order or a message."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from .model import Location

Severity = Literal["error", "warning", "info"]


class Finding(BaseModel):
    rule: str  # stable id, e.g. go.dose
    severity: Severity
    message: str  # plain language, naming the values seen and expected
    location: Location | None = None
    order_index: int | None = None  # None: about the message as a whole
    values: dict[str, Any] = {}  # computed values behind the finding (audit)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "location": self.location.short() if self.location else None,
            "message": self.message,
        }


def error(rule: str, message: str, location: Location | None = None, **values: Any) -> Finding:
    return Finding(rule=rule, severity="error", message=message, location=location, values=values)


def warning(rule: str, message: str, location: Location | None = None, **values: Any) -> Finding:
    return Finding(rule=rule, severity="warning", message=message, location=location, values=values)


def info(rule: str, message: str, location: Location | None = None, **values: Any) -> Finding:
    return Finding(rule=rule, severity="info", message=message, location=location, values=values)


def finding(rule: str, severity: Severity, message: str, location: Location | None = None, **values: Any) -> Finding:
    """A finding whose severity is a protocol parameter."""
    return Finding(rule=rule, severity=severity, message=message, location=location, values=values)
