"""Scrub personal data and secrets from production prompts before any model sees them.

Pure text functions. Each finding is replaced by a typed placeholder (``[EMAIL]``,
``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[IP]``, ``[SECRET]``). Look-alikes are checked, not
just pattern-matched: card numbers must pass Luhn, IBANs the ISO 13616 mod-97 check, IP
addresses must parse, generic secrets must be long, mixed and high-entropy.
"""
from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from typing import Callable

KINDS = ("email", "secret", "iban", "card", "ip", "phone")

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")
# provider formats first; the generic high-entropy check is applied to the remaining tokens
KNOWN_SECRETS = re.compile(
    r"\b(?:sk-(?:proj-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic
    r"|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"  # GitHub
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"  # JWT
)
TOKEN = re.compile(r"(?<![A-Za-z0-9_\-+/=])[A-Za-z0-9_\-+/=]{24,}(?![A-Za-z0-9_\-+/=])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# CARD and IPV4 begin with their first digit and look behind it (``\d(?<![\d-]\d)`` is
# ``(?<![\d-])\d``): a pattern that begins with a character class lets the regex engine skip
# to the next digit, one that begins with a look-behind is tried at every position (3-5x slower)
CARD = re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?![\d-])")
IPV4 = re.compile(r"\d(?<![\d.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\d.])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,8}){1,4}(?![\w])"
    r"|(?<![\w+])\+\d{8,14}(?!\w)"
)


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def looks_secret(tok: str) -> bool:
    """A long token mixing letters and digits with high entropy; not a plain hex digest
    or a word-like identifier."""
    if re.fullmatch(r"[0-9a-fA-F]+", tok) or re.fullmatch(r"[a-z_-]+|[A-Z_-]+", tok):
        return False
    has = [any(c.isdigit() for c in tok), any(c.islower() for c in tok), any(c.isupper() for c in tok)]
    return sum(has) >= 3 and entropy(tok) >= 4.0


def _phone_ok(m: str) -> bool:
    digits = re.sub(r"\D", "", m)
    if not 9 <= len(digits) <= 15:
        return False
    if re.fullmatch(r"\d{4}[-.]\d{2}[-.]\d{2}", m.strip()):  # an ISO date
        return False
    if re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", m.strip()):  # dotted quad: an (invalid) IP, not a phone
        return False
    return m.strip().startswith(("+", "(")) or len(re.findall(r"[ .-]", m.strip())) >= 2


def _ip_ok(m: str) -> bool:
    try:
        ipaddress.ip_address(m)
    except ValueError:
        return False
    return ":" not in m or m.count(":") >= 2 and any(c.isalnum() for c in m)


CHECKS: dict[str, tuple[re.Pattern, Callable[[str], bool], str]] = {
    "email": (EMAIL, lambda m: True, "[EMAIL]"),
    "secret": (KNOWN_SECRETS, lambda m: True, "[SECRET]"),
    "iban": (IBAN, iban_ok, "[IBAN]"),
    "card": (CARD, lambda m: luhn(re.sub(r"\D", "", m)), "[CARD]"),
    "ip": (IPV4, _ip_ok, "[IP]"),
    "ip6": (IPV6, _ip_ok, "[IP]"),
    "phone": (PHONE, _phone_ok, "[PHONE]"),
    "token": (TOKEN, looks_secret, "[SECRET]"),
}
_KIND_OF = {"ip6": "ip", "token": "secret"}
# The fewest digits a finding of each check holds: a card number 13, a phone number 9 (the
# check rejects shorter ones), an IPv4 address 4, an IBAN 2, a generic secret token 1 (it
# must mix digits, lower and upper case). Most prompts hold a few digits at most, so these
# passes are skipped there.
_MIN_DIGITS = {"iban": 2, "card": 13, "ip": 4, "phone": 9, "token": 1}
_DIGIT = re.compile(r"\d")


def _may_match(name: str, text: str, digits: int) -> bool:
    """False when ``text`` lacks what every finding of check ``name`` contains."""
    if name in _MIN_DIGITS:
        return digits >= _MIN_DIGITS[name]
    if name == "email":
        return "@" in text
    if name == "ip6":
        return text.count(":") >= 2
    return True


def scrub(text: str, kinds: tuple[str, ...] | list[str] = KINDS) -> tuple[str, Counter]:
    """``text`` with every finding of ``kinds`` replaced, and the count per kind."""
    found: Counter = Counter()
    # placeholders hold no digit, so a replacement never adds one: counted once
    digits = len(_DIGIT.findall(text))
    for name, (pattern, ok, placeholder) in CHECKS.items():
        kind = _KIND_OF.get(name, name)
        if kind not in kinds or not _may_match(name, text, digits):
            continue

        def repl(m: re.Match, kind=kind, ok=ok, placeholder=placeholder) -> str:
            if ok(m.group()):
                found[kind] += 1
                return placeholder
            return m.group()

        text = pattern.sub(repl, text)
    return text, found
