"""Character sets (MSH-18) and escape sequences: read correctly, answered in ASCII, never a crash."""

from __future__ import annotations

import pytest

from fuzz.properties import UTC, answer_bytes
from tests.builders import ACETAMINOPHEN, adult_order_set, premed_order, standard_premeds
from validator.er7 import Encoding, decode, split_messages, unescape
from validator.reader import read_order_set


def with_charset(text: str, charset: str) -> str:
    lines = text.rstrip("\r").split("\r")
    fields = lines[0].split("|")
    fields += [""] * (18 - len(fields))
    fields[17] = charset  # fields[0] is "MSH", so fields[17] is MSH-18
    lines[0] = "|".join(fields)
    return "\r".join(lines) + "\r"


def message_with_premed_text(drug_text: str, charset: str) -> str:
    """The accepted adult message; the acetaminophen order's RXE-2.2 (drug text) replaced by `drug_text`."""
    premeds = standard_premeds()
    first = premed_order("ORD1002", ACETAMINOPHEN.replace("acetaminophen", drug_text), "650")
    premeds[: len(first)] = first
    return with_charset(adult_order_set("CS0001", premeds=premeds), charset)


def premed_text(data: bytes) -> str:
    order_set = read_order_set(split_messages(decode(data)).messages[0], UTC)
    return next(o for o in order_set.orders if o.placer_number == "ORD1002").drug.text


@pytest.mark.parametrize("charset, codec, text", [
    ("", "ascii", "acetaminophen"),
    ("ASCII", "ascii", "acetaminophen"),
    ("8859/1", "latin-1", "paracétamol"),
    ("8859/1", "latin-1", "Paracetamol µ 10 °C ñ ü"),
    ("UNICODE UTF-8", "utf-8", "paracétamol"),
    ("UNICODE UTF-8", "utf-8", "парацетамол 対乙酰氨基酚 µ²"),
    ("", "latin-1", "paracétamol"),  # no MSH-18, bytes not UTF-8: read as 8859/1
    ("", "utf-8", "paracétamol"),  # no MSH-18, valid UTF-8
])
def test_drug_text_is_read_in_the_declared_character_set(charset, codec, text):
    data = message_with_premed_text(text, charset).encode(codec)
    assert premed_text(data) == text
    [outcome] = answer_bytes(data)
    assert outcome.ack_code == "AA", outcome.result["findings"]  # the premed is matched by its RxNorm code
    if charset == "UNICODE UTF-8":  # answered in UTF-8, declaring it, the text echoed unchanged
        assert outcome.response.split("\r")[0].split("|")[17] == "UNICODE UTF-8"
        assert text in outcome.response
    else:
        assert outcome.response.isascii()


def test_8859_1_bytes_that_happen_to_be_valid_utf8_follow_msh18():
    """'Ã©' in 8859/1 is the bytes C3 A9, which are also UTF-8 for 'é': MSH-18 decides."""
    data = message_with_premed_text("paracÃ©tamol", "8859/1").encode("latin-1")
    assert premed_text(data) == "paracÃ©tamol"


def test_byte_order_mark_and_mllp_framing_are_ignored():
    data = b"\x0b\xef\xbb\xbf" + message_with_premed_text("paracétamol", "UNICODE UTF-8").encode() + b"\x1c\r"
    assert premed_text(data) == "paracétamol"


@pytest.mark.parametrize("raw, expected", [
    ("A\\F\\B", "A|B"), ("A\\S\\B", "A^B"), ("A\\T\\B", "A&B"), ("A\\R\\B", "A~B"), ("A\\E\\B", "A\\B"),
    ("\\X41\\\\X42\\", "AB"), ("\\X4142\\", "AB"), ("caf\\XE9\\", "café"), ("caf\\XC3A9\\", "café"),
    ("A\\.br\\B", "A\nB"), ("\\H\\bold\\N\\", "bold"),
    # broken sequences are kept literally, never a crash
    ("A\\F", "A\\F"), ("A\\XZZ\\B", "A\\XZZ\\B"), ("A\\X4\\B", "A\\X4\\B"), ("\\Q\\", "\\Q\\"), ("\\", "\\"),
])
def test_escape_sequences(raw, expected):
    assert unescape(raw, Encoding()) == expected


def test_escapes_in_a_field_are_read_and_the_response_escapes_them_back():
    text = "acet\\F\\amino\\S\\phen\\T\\x\\R\\y\\E\\z"
    data = message_with_premed_text(text, "").encode()
    assert premed_text(data) == "acet|amino^phen&x~y\\z"
    [outcome] = answer_bytes(data)
    rxe = [s for s in outcome.response.split("\r") if s.startswith("RXE|") and "161^" in s][0]
    assert "acet\\F\\amino\\S\\phen\\T\\x\\R\\y\\E\\z" in rxe  # echoed with the standard escapes


def test_escapes_with_other_encoding_characters():
    """With MSH-2 = `$#@!` (escape `@`), `@F@` is the field separator `%`... read back with the message's own."""
    enc = Encoding("%", "$", "#", "@", "!")
    assert unescape("a@F@b@S@c@T@d@R@e@E@f", enc) == "a%b$c!d#e@f"


def test_hex_escape_in_drug_text_of_an_8859_1_message():
    data = message_with_premed_text("parac\\XE9\\tamol", "8859/1").encode("latin-1")
    assert premed_text(data) == "paracétamol"


def test_hex_escape_in_drug_text_of_a_utf8_message():
    data = message_with_premed_text("parac\\XC3A9\\tamol", "UNICODE UTF-8").encode()
    assert premed_text(data) == "paracétamol"
