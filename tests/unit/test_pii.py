"""PII and secret scrubbing on a corpus built here: true positives of every kind and
look-alike negatives (non-Luhn card numbers, bad IBAN checksums, versions, dates, hashes…).
Prints precision and recall; both must stay high."""
from __future__ import annotations

import random
import string

from agents.pii import find, luhn, scrub

R = random.Random(20261127)


def card(prefix: str, length: int) -> str:
    body = prefix + "".join(R.choice(string.digits) for _ in range(length - len(prefix) - 1))
    check = next(d for d in string.digits if luhn(body + d))
    return body + check


def iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


def grouped(s: str, n: int = 4, sep: str = " ") -> str:
    return sep.join(s[i:i + n] for i in range(0, len(s), n))


def rand(chars: str, n: int) -> str:
    return "".join(R.choice(chars) for _ in range(n))


ALNUM = string.ascii_letters + string.digits


def positives() -> list[tuple[str, str, str]]:
    """(kind, value, sentence containing it)"""
    out = []
    for _ in range(20):
        v = f"{rand(string.ascii_lowercase, 6)}.{rand(string.ascii_lowercase, 4)}@{R.choice(['example.com', 'mail.co.uk', 'corp.io'])}"
        out.append(("email", v, f"Please reply to {v} by Friday."))
    for fmt in ["+1 (555) {a}-{b}", "(555) {a}-{b}", "+44 20 {a} {b}", "555-{a}-{b}", "+49 30 {a}{b}", "+33612{a}{b}"]:
        for _ in range(4):
            v = fmt.format(a=rand(string.digits, 3 if "20 " not in fmt else 4), b=rand(string.digits, 4))
            out.append(("phone", v, f"Call me on {v} tomorrow."))
    for prefix, length in [("4", 16), ("51", 16), ("55", 16), ("34", 15), ("37", 15), ("6011", 16)]:
        for sep in ["", " ", "-"]:
            v = card(prefix, length)
            v = grouped(v, 4, sep) if sep else v
            out.append(("card", v, f"My card number is {v}, expiry 09/27."))
    for country, n in [("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20)]:
        for spaced in (False, True):
            bban = (rand(string.ascii_uppercase, 4) + rand(string.digits, n - 4)) if country in ("GB", "NL") else rand(string.digits, n)
            v = iban(country, bban)
            v = grouped(v) if spaced else v
            out.append(("iban", v, f"Send it to IBAN {v} please."))
    for _ in range(10):
        v = ".".join(str(R.randint(1, 254)) for _ in range(4))
        out.append(("ip", v, f"The server at {v} is down."))
    for v in ["2001:db8::8a2e:370:7334", "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"]:
        out.append(("ip", v, f"Ping {v} first."))
    secrets = ["sk-proj-" + rand(ALNUM, 40), "sk-" + rand(ALNUM, 48), "AKIA" + rand(string.ascii_uppercase + string.digits, 16),
               "ghp_" + rand(ALNUM, 36), "xoxb-" + rand(string.digits, 12) + "-" + rand(ALNUM, 24),
               "AIza" + rand(ALNUM, 35), "hf_" + rand(ALNUM, 34), "sk_live_" + rand(ALNUM, 24),
               "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0." + rand(ALNUM, 43)]
    secrets += [rand(ALNUM, 32) for _ in range(8)]  # generic high-entropy tokens
    out += [("secret", v, f"export API_KEY={v} then run it") for v in secrets]
    return out


NEGATIVES = [
    "Card-like but not Luhn: 4111 1111 1111 1112 and 1234 5678 9012 3456.",
    "IBAN with a bad checksum: DE00 1234 5678 9012 3456 78.",
    "GB00WEST12345698765432 is not a real account.",
    "We upgraded from v2.10.3 to version 3.1.4 last week.",
    "The meeting is on 2024-10-05 at 14:30:00 UTC.",
    "Not an address: 300.1.2.3 or 256.256.256.256.",
    "Revenue was $1,234,567.89 in 2023, up 12.5%.",
    "ISBN 978-3-16-148410-0 is on page 42.",
    "Commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it.",
    "The sha256 is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.",
    "Use the UUID 123e4567-e89b-12d3-a456-426614174000 as the key.",
    "internationalization-and-localization-guidelines are long words",
    "Order number 20241005 shipped; tracking 1Z999 soon.",
    "Solve 12 + 34 = 46 and 1/2 + 1/4 = 3/4.",
    "Room 101, floor 3, building 7.",
    "The year 1999 and the year 2000.",
    "Python 3.11.7 with numpy 2.4.6 and torch 2.13.0.",
    "The ratio 16:9 and the time 10:45.",
    "Coordinates 51.5074, -0.1278 mark London.",
    "A user@ sign alone, or an @mention like @alice, is not an e-mail.",
    "Temperature dropped to -12 C at 06:00.",
    "Chapter 12.3.4 covers it; see section 4.5.",
    "He scored 98 out of 100 on 3 tests.",
    "The function getUserAccountBalance returns a float.",
    "CONSTANT_NAME_FOR_MAXIMUM_RETRY_COUNT is set to 5.",
    "Lot 12-345-678 was recalled.",
    "The answer is 1,200 apples and 350 oranges.",
    "MAC address 00:1A:2B:3C:4D:5E belongs to the router.",
    "Serial ABCD-EFGH-IJKL-MNOP printed on the box.",
    "Flight LH 400 departs at 13:05 from gate B12.",
]


def test_scrubbing_precision_and_recall():
    pos = positives()
    tp = fn = 0
    for kind, value, sentence in pos:
        out, found = scrub(sentence)
        hit = value not in out and found[kind] >= 1
        tp += hit
        fn += not hit
    fp = sum(1 for s in NEGATIVES if sum(scrub(s)[1].values()) > 0)
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    print(f"\nPII scrubbing: {len(pos)} positives, {len(NEGATIVES)} look-alike negatives, "
          f"precision {precision:.3f}, recall {recall:.3f} (fp={fp}, fn={fn})")
    misses = [(k, v) for k, v, s in pos if v in scrub(s)[0]]
    false = [s for s in NEGATIVES if sum(scrub(s)[1].values())]
    assert recall >= 0.95, misses
    assert precision >= 0.95, false


def test_placeholders_are_typed_and_kinds_configurable():
    text = "Mail a@b.com, call +1 (555) 123-4567, card 4111111111111111, host 10.0.0.1"
    out, found = scrub(text)
    assert out == "Mail [EMAIL], call [PHONE], card [CARD], host [IP]"
    assert dict(found) == {"email": 1, "phone": 1, "card": 1, "ip": 1}
    out, found = scrub(text, kinds=["email"])
    assert out.startswith("Mail [EMAIL], call +1 (555) 123-4567") and dict(found) == {"email": 1}


def test_texts_without_digits_still_scrubbed():
    """Checks that need a digit are skipped for digit-free texts; those that do not (e-mail,
    provider secrets, an IPv6 address of hex letters only) still find theirs."""
    secret = "sk-proj-" + rand(string.ascii_letters, 40)
    text = f"Write to jane.doe@example.com from fe::ab with key {secret}, please."
    out, found = scrub(text)
    assert out == "Write to [EMAIL] from [IP] with key [SECRET], please."
    assert dict(found) == {"email": 1, "ip": 1, "secret": 1}
    # a digit only after an e-mail is replaced still counts: the phone is found
    out, found = scrub("Mail x@y.org or call +1 (555) 123-4567")
    assert out == "Mail [EMAIL] or call [PHONE]" and found["phone"] == 1


# The classes of text production prompts hold, each with what it must become: trailing
# punctuation, addresses inside URLs and code, numbers glued to words, mixed scripts,
# punycode and IDN e-mail domains, IBANs followed by words or amounts and split by dashes,
# IPv6 with an embedded IPv4 address, CIDR and zone suffixes. The entity goes whole.
PRODUCTION = [
    ("The server is 10.0.0.1.", "The server is [IP]."),
    ("Mail me at jane@corp.io.", "Mail me at [EMAIL]."),
    ("Call +44 20 7946 0958.", "Call [PHONE]."),
    ("IBAN DE89370400440532013000.", "IBAN [IBAN]."),
    ("Hosts (10.0.0.1), '10.0.0.2' and <10.0.0.3>; done", "Hosts ([IP]), '[IP]' and <[IP]>; done"),
    ("GET http://10.0.0.1:8080/api then https://[2001:db8::1]:443/x", "GET http://[IP]:8080/api then https://[[IP]]:443/x"),
    ("mailto:jane@corp.io?subject=hi", "mailto:[EMAIL]?subject=hi"),
    ('conn = connect(host="10.1.2.3", user="x")', 'conn = connect(host="[IP]", user="x")'),
    ('{"email":"jane@corp.io","ip":"192.168.0.1"}', '{"email":"[EMAIL]","ip":"[IP]"}'),
    ("curl -H 'X-Forwarded-For: 203.0.113.7' https://api.example.com",
     "curl -H 'X-Forwarded-For: [IP]' https://api.example.com"),
    ('ip_network("10.0.0.0/8") and ping6 fe80::1%eth0', 'ip_network("[IP]") and ping6 [IP]'),
    ("card:4111111111111111 ip=10.0.0.1 tel:+14155550132", "card:[CARD] ip=[IP] tel:[PHONE]"),
    ("Kartennr.4111111111111111, ref#4111-1111-1111-1111, Visa4111111111111111",
     "Kartennr.[CARD], ref#[CARD], Visa[CARD]"),
    ("IBAN:DE89370400440532013000 Tel.+49 30 1234567", "IBAN:[IBAN] Tel.[PHONE]"),
    ("Напишите на ivan.petrov@mail.ru. IP адрес 10.0.0.1.", "Напишите на [EMAIL]. IP адрес [IP]."),
    ("请联系zhang.wei@example.cn谢谢", "请联系[EMAIL]谢谢"),
    ("お電話は+81 3-1234-5678まで", "お電話は[PHONE]まで"),
    ("Позвоните +7 495 123-45-67.", "Позвоните [PHONE]."),
    ("a@xn--d1acufc.xn--p1ai or user@xn--mller-kva.de", "[EMAIL] or [EMAIL]"),
    ("josé.garcía@correo.es, info@bücher.de, почта: админ@пример.рф", "[EMAIL], [EMAIL], почта: [EMAIL]"),
    ("Pay DE89 3704 0044 0532 0130 00 EUR 500 now", "Pay [IBAN] EUR 500 now"),
    ("IBAN GB82 WEST 1234 5698 7654 32 Barclays", "IBAN [IBAN] Barclays"),
    ("DE89370400440532013000 Deutsche Bank, NL91ABNA0417164300 EUR 12", "[IBAN] Deutsche Bank, [IBAN] EUR 12"),
    ("Dashes: DE89-3704-0044-0532-0130-00", "Dashes: [IBAN]"),
    ("Mapped ::ffff:192.0.2.1, NAT64 64:ff9b::198.51.100.7, 2001:db8:85a3::8a2e:192.0.2.33",
     "Mapped [IP], NAT64 [IP], [IP]"),
    ("Routes 10.0.0.0/8, 2001:db8::/32 and fe80::1%eth0/64.", "Routes [IP], [IP] and [IP]."),
    ("Call 0 532 123 45 67 or +33 1 42 68 53 00 today", "Call [PHONE] or [PHONE] today"),
]
# look-alikes: each left whole (never half replaced)
LEFT_WHOLE = ["x :: Int", "std::cout and a::b::c", "section 1.2.3.4.5", "build v1.2.3.4",
              "::ffff:256.0.0.1", "2001:db8::256.1.1.1", "Python 3.11.7 costs 1,234,567.89",
              "ISBN 978-3-16-148410-0", "order 20241005 on 2024-10-05", "1748503543012",
              "UUID 123e4567-e89b-12d3-a456-426614174000", "AL47 2121 1009 0000 0002 3569 8740"]


def test_production_text_is_scrubbed_whole():
    for text, want in PRODUCTION:
        assert scrub(text)[0] == want, text
    for text in LEFT_WHOLE:
        assert scrub(text) == (text, {}), text


def test_national_phone_numbers_follow_the_regions_configured():
    regions = ("US", "GB", "DE", "TR", "PH", "CN")
    for text, want in [("Call 05321234567 today", "Call [PHONE] today"), ("电话13812345678", "电话[PHONE]"),
                       ("call 0917 123 4567 or (415) 555-0132", "call [PHONE] or [PHONE]")]:
        assert scrub(text, phone_regions=regions)[0] == want, text
    assert scrub("Call 05321234567 today")[0] == "Call 05321234567 today"  # no region: not a number known


FRAGMENTS = [t for t, _ in PRODUCTION] + LEFT_WHOLE + [" ", ".", ",", ":", "/", "-", "@", "(", ")", "[", "]", "%",
                                                       "0", "7", "12", "::", "+", "abc", "Ab", "é", "中", "\n"]


def test_findings_never_overlap_and_scrubbing_twice_changes_nothing():
    """Production lines, look-alikes and punctuation in random order, split by a space, a
    newline or ", ": findings are disjoint spans inside the text, and a placeholder never
    makes (or breaks) a finding."""
    rng = random.Random(20261206)
    for _ in range(400):
        text = "".join(rng.choice(FRAGMENTS) + rng.choice([" ", "\n", ", "]) for _ in range(rng.randint(1, 8)))
        spans = find(text, phone_regions=("US", "TR"))
        assert all(0 <= s < e <= len(text) for s, e, _ in spans), text
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (text, spans)
        once, _ = scrub(text, phone_regions=("US", "TR"))
        assert scrub(once, phone_regions=("US", "TR")) == (once, {}), (text, once)
