"""Finders for the PII kinds that live in structured numbers: IP addresses, IBANs, phone
numbers. Each finder takes the text (earlier findings masked out, offsets kept) and returns
the ``(start, end)`` spans of what it found; ``agents.pii`` turns them into placeholders.

A finding is the whole entity (an IPv6 prefix before an embedded IPv4 address, a zone, a
CIDR suffix; an IBAN's separators; a phone number's trunk prefix), and a look-alike that
fails its check is left whole: never half of it replaced.
"""
from __future__ import annotations

import ipaddress
import re

import phonenumbers

# IPv4: four dotted octets, not glued to a word or to more dotted numbers (``v1.2.3.4``,
# ``1.2.3.4.5`` are versions), an optional CIDR prefix; a trailing full stop ends it
IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?:/\d{1,3})?(?!\w|\.\d)")
# IPv6: hex groups with at least two colons in the first two groups, an optional embedded
# IPv4 address after the last colon, an optional zone (``%eth0``) and CIDR prefix
IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]{2,39}"
                  r"(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?:%[0-9A-Za-z_]+)?(?:/\d{1,3})?(?![\w:]|\.\d)")
# IBAN: country, check digits, then alphanumerics in groups split by one space or dash;
# the country's registered length (ISO 13616 registry) cuts it, so a word after it is no part.
# ``[A-Z](?<!\w[A-Z])`` is ``\b[A-Z]``: beginning with a character class lets the engine skip
# to the next capital instead of trying every position
IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?:[ -]?[A-Z0-9]){11,30}")
IBAN_LENGTHS = {c[:2]: int(c[2:]) for c in (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27 DK18 DO28 "
    "EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HN28 HR21 HU28 IE22 IL23 IQ23 IS26 "
    "IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 MN20 MR27 MT31 MU30 NI28 "
    "NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 "
    "SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30").split()}
# phone numbers written as phone numbers whatever the region: an optional +country code and
# trunk 0, an optional (area code), then groups split by space, dot or dash (``_phone_ok``
# wants 9-15 digits and a + or ( or two separators)
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:0[ .-])?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,8}){1,4}(?!\w)"
    r"|(?<![\w+])\+\d{8,14}(?!\w)")
# where libphonenumber is worth asking: seven or more digits in a row, at most three
# separators apart (it is asked about each such run with a little context, not about the
# whole text: its matcher's cost grows with the text, per region; docs/pii.md)
PHONE_RUN = re.compile(r"\d(?:[ ().\-/]{0,3}\d){6,}")
_CONTEXT = 8


def _ip_end(text: str, m: re.Match) -> tuple[int, bool]:
    """Where the IP address matched by ``m`` ends (its CIDR suffix dropped when that is not a
    valid prefix length) and True; the match's end and False when it is no address."""
    addr, slash, prefix = m.group().partition("/")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return m.end(), False
    if addr == "::" and not _unspecified_ok(text[m.start() - 1:m.start()], text[m.end():m.end() + 1]):
        return m.end(), False
    if slash and prefix.isdigit() and int(prefix) <= ip.max_prefixlen:
        return m.end(), True
    return m.start() + len(addr), True


def _unspecified_ok(before: str, after: str) -> bool:
    """Whether a bare ``::`` between these characters is the unspecified address: it stands
    alone or after ``=`` or an opening bracket or quote, and not between spaces (``x :: Int``
    is a type annotation; ``]::`` follows a placeholder or an index)."""
    if before == " " == after:
        return False
    return before == "" or before.isspace() or before in "=[('\","


def _iban_end(text: str, m: re.Match) -> tuple[int, bool] | None:
    """Where the IBAN starting at ``m`` ends (its country's length in alphanumerics) and whether
    it is one (the mod-97 check passes, it does not run on into the next character); None for
    a country with no IBAN."""
    want = IBAN_LENGTHS.get(m.group()[:2])
    if want is None:
        return None
    kept, end = [], m.end()
    for i, ch in enumerate(m.group()):
        if ch.isalnum():
            kept.append(ch)
            if len(kept) == want:
                end = m.start() + i + 1
                break
    if len(kept) < want or text[end:end + 1].isalnum():
        return end, False
    s = "".join(kept)
    return end, int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def _phone_ok(m: str) -> bool:
    digits = re.sub(r"\D", "", m)
    if not 9 <= len(digits) <= 15:
        return False
    if re.fullmatch(r"\d{4}[-.]\d{2}[-.]\d{2}", m):  # an ISO date
        return False
    if re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", m):  # dotted quad: an (invalid) IP, not a phone
        return False
    return m.startswith(("+", "(")) or len(re.findall(r"[ .-]", m)) >= 2


Spans = list[tuple[int, int]]


def scan(pattern: re.Pattern, end_of, text: str) -> tuple[Spans, Spans]:
    """The findings among ``pattern``'s matches and the look-alikes rejected: ``end_of(text,
    match)`` says where each ends and whether it is a finding (None: neither). The search goes
    on after each, so a look-alike is left whole (the caller keeps later checks off it too)."""
    found, rejected, pos = [], [], 0
    while (m := pattern.search(text, pos)) is not None:
        verdict = end_of(text, m)
        end = m.end()
        if verdict is not None:
            end, ok = verdict
            (found if ok else rejected).append((m.start(), end))
        pos = max(end, m.start() + 1)
    return found, rejected


def mask(text: str, spans: Spans) -> str:
    """``text`` with ``spans`` blanked out (NUL: no word character), offsets kept."""
    for s, e in spans:
        text = text[:s] + "\0" * (e - s) + text[e:]
    return text


def ips(text: str) -> tuple[Spans, Spans]:
    """IP addresses and the look-alikes rejected; IPv6 first (so the IPv4 address inside
    ``::ffff:192.0.2.1`` goes with its prefix, and none is found inside an invalid one)."""
    v6, bad6 = scan(IPV6, _ip_end, text) if text.count(":") >= 2 else ([], [])
    v4, bad4 = scan(IPV4, _ip_end, mask(text, v6 + bad6))
    return v6 + v4, bad6 + bad4


def ibans(text: str) -> tuple[Spans, Spans]:
    """IBANs and the look-alikes rejected (a wrong checksum or length, as long as the
    country's IBANs: no card or phone number is found inside one)."""
    return scan(IBAN, _iban_end, text)


def phones(text: str, regions: tuple[str, ...] = ()) -> list[tuple[int, int]]:
    """Phone numbers libphonenumber finds valid: international ones (+ prefixed) and the
    national ones of ``regions``."""
    if not regions and "+" not in text:
        return []
    spans = set()
    for run in PHONE_RUN.finditer(text):
        start = max(run.start() - _CONTEXT, 0)
        window = text[start:run.end() + _CONTEXT]
        for region in (("ZZ",) if "+" in window else ()) + tuple(regions):  # ZZ: + prefixed numbers only
            found = [(start + m.start, start + m.end)
                     for m in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.VALID)]
            spans.update(found)
            if any(s <= run.start() and run.end() <= e for s, e in found):
                break  # the whole run is one number: no other region reads more of it
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):  # two regions may read one number differently: the longer reading
        if out and s < out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return out


def phone_forms(text: str) -> list[tuple[int, int]]:
    """Numbers written as phone numbers whatever their region (``PHONE``): what libphonenumber
    leaves (a number of a region not configured, a fictitious 555 one)."""
    return [m.span() for m in PHONE.finditer(text) if _phone_ok(m.group())]


def phone_regions(value: str) -> tuple[str, ...]:
    """The ISO 3166 regions of a comma-separated list (``"US,GB,DE"``); ValueError naming an
    unknown one."""
    regions = tuple(r.strip().upper() for r in value.split(",") if r.strip())
    bad = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
    if bad:
        hint = " (the United Kingdom is GB)" if "UK" in bad else ""
        raise ValueError(f"unknown phone region(s) {', '.join(bad)}{hint}; use ISO 3166 codes such as US,GB,DE")
    return regions
