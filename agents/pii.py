"""Scrub personal data and secrets from production prompts before any model sees them.

Pure text functions. Each finding is replaced by a typed placeholder (``[EMAIL]``,
``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[IP]``, ``[SECRET]``). Look-alikes are checked, not
just pattern-matched: card numbers must pass Luhn and start with an issuer's digit, IBANs
their country's length and the ISO 13616 mod-97 check, IP addresses must parse, phone
numbers must be valid for their country (libphonenumber) or be written as phone numbers,
generic secrets must be long, mixed and high-entropy. A finding is the whole entity; a
look-alike is left whole. Recall and precision per kind, and the suites: docs/pii.md.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, get_args

from agents.pii_net import Spans, ibans, ips, mask, phone_forms, phone_regions, phones
from schemas.objectives import PiiKind

__all__ = ["KINDS", "find", "luhn", "phone_regions", "scrub"]

KINDS = get_args(PiiKind)  # declared once, in the objective schema

# letters of the scripts written with spaces between words (Latin, Greek, Cyrillic): an
# address may use them (IDN); CJK text runs into an address with no space, so it ends one
_L = "A-Za-z0-9\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F\u0370-\u03FF\u0400-\u04FF"
EMAIL = re.compile(rf"(?<![{_L}._%+-])[{_L}._%+-]+@[{_L}-]+(?:\.[{_L}-]+)*"
                   rf"\.(?:xn--[A-Za-z0-9-]+|[A-Za-z\u00C0-\u024F\u0370-\u03FF\u0400-\u04FF]{{2,24}})(?![{_L}-])")
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
# CARD begins with its first digit and looks behind it (``\d(?<![\d-]\d)`` is
# ``(?<![\d-])\d``): a pattern that begins with a character class lets the regex engine skip
# to the next digit, one that begins with a look-behind is tried at every position (slower: benchmarks/text.py)
CARD = re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?![\d-])")
ISSUERS = "123456"  # a card scheme's major industry identifier (not 7-9: fuel, health, national)


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


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


def _card_ok(m: str) -> bool:
    digits = re.sub(r"\D", "", m)
    return digits[0] in ISSUERS and (digits[0] != "1" or len(digits) == 15) and luhn(digits)  # 1: UATP, 15 digits


Finder = Callable[[str, tuple[str, ...]], tuple[Spans, Spans]]  # (text, regions) -> (found, rejected)


def _regex(pattern: re.Pattern, ok: Callable[[str], bool]) -> Finder:
    def finder(text: str, regions: tuple[str, ...]) -> tuple[Spans, Spans]:
        first = pattern.search(text)  # most texts have none: cheaper than a finditer
        if first is None:
            return [], []
        return [m.span() for m in pattern.finditer(text, first.start()) if ok(m.group())], []
    return finder


# in this order: a later check sees the earlier findings and the IBAN and IP look-alikes
# rejected masked out (placeholders: the kind in capitals, ``[EMAIL]``)
CHECKS: dict[str, Finder] = {
    "email": _regex(EMAIL, lambda m: True),
    "secret": _regex(KNOWN_SECRETS, lambda m: True),
    "iban": lambda text, regions: ibans(text),
    "card": _regex(CARD, _card_ok),
    "ip": lambda text, regions: ips(text),
    "phone": lambda text, regions: (phones(text, regions), []),
    "phone_form": lambda text, regions: (phone_forms(text), []),
    "token": _regex(TOKEN, looks_secret),
}
_KIND_OF = {"phone_form": "phone", "token": "secret"}
# The fewest digits a finding of each check holds: a card number 13, a phone number 7 (9
# written as one with no region), an IBAN 2, a generic secret token 1 (it mixes digits, lower
# and upper case); an IP address has four digits or two colons. Most prompts hold a few
# digits at most, so these passes are skipped there.
_MIN_DIGITS = {"iban": 2, "card": 13, "phone": 7, "phone_form": 9, "token": 1}
_DIGIT = re.compile(r"\d")


def _may_match(name: str, text: str, digits: int) -> bool:
    """False when ``text`` lacks what every finding of check ``name`` contains."""
    if name in _MIN_DIGITS:
        return digits >= _MIN_DIGITS[name]
    if name == "email":
        return "@" in text
    if name == "ip":
        return digits >= 4 or text.count(":") >= 2
    return True


def find(text: str, kinds: tuple[str, ...] | list[str] = KINDS,
         phone_regions: tuple[str, ...] = ()) -> list[tuple[int, int, str]]:
    """``(start, end, kind)`` of every finding of ``kinds`` in ``text``, in order, none
    overlapping; phone numbers national to ``phone_regions`` (ISO codes) are found too."""
    found: list[tuple[int, int, str]] = []
    digits = len(_DIGIT.findall(text))
    masked = text
    for name, finder in CHECKS.items():
        kind = _KIND_OF.get(name, name)
        if kind not in kinds or not _may_match(name, text, digits):
            continue
        spans, rejected = finder(masked, phone_regions)
        found += [(s, e, kind) for s, e in spans]
        if spans or rejected:
            masked = mask(masked, spans + rejected)
    return sorted(found)


def scrub(text: str, kinds: tuple[str, ...] | list[str] = KINDS,
          phone_regions: tuple[str, ...] = ()) -> tuple[str, Counter]:
    """``text`` with every finding of ``kinds`` replaced, and the count per kind."""
    counts: Counter = Counter()
    out, pos = [], 0
    for s, e, kind in find(text, kinds, phone_regions):
        out += [text[pos:s], f"[{kind.upper()}]"]
        counts[kind] += 1
        pos = e
    if not counts:
        return text, counts
    out.append(text[pos:])
    return "".join(out), counts
