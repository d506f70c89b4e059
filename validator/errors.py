"""Errors a caller must handle, carrying what an interface analyst needs to act."""

from __future__ import annotations


class MessageRejected(Exception):
    """The message as a whole cannot be processed (MSA-1 `AR`).

    `code` is the HL7 table 0357 code (100 segment sequence, 101 required field
    missing, 102 data type, 200 unsupported type, 201 unsupported event, 203
    unsupported version, 207 application error); `rule` is the `hl7.*` rule id.
    """

    def __init__(self, rule: str, code: str, message: str, segment: str = "MSH", field: int = 0):
        super().__init__(message)
        self.rule = rule
        self.code = code
        self.message = message
        self.segment = segment
        self.field = field


class ProtocolError(Exception):
    """A protocol definition file is malformed; the message names the file and field."""
