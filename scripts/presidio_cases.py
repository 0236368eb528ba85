"""Derive ``tests/data/presidio_cases.jsonl`` from Microsoft Presidio's recognizer tests (MIT).

    python scripts/presidio_cases.py GIT_DIR [REV]    # GIT_DIR: a clone of microsoft/presidio

Reads the literal ``pytest.mark.parametrize`` tables of five test files (their text is data
here: parsed with ``ast``, never run) and writes one case a line: ``kind``, ``text``, the
``spans`` a recognizer must find (``[start, end]``), ``regions`` for phone cases (the regions
the Presidio test configured), and ``source`` (file::test). The first line is a header naming
the repository, commit and licence. Rules (also in tests/data/presidio_cases.md):

- a case expecting one finding with no positions given is the whole text (three IPv6 cases);
- the phone leniency table is kept at Presidio's default leniency (1, VALID): a row at
  leniency 1, or a row at a stricter leniency that finds every number (it is found at 1 too).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

FILES = {
    "card": "presidio-analyzer/tests/test_credit_card_recognizer.py",
    "email": "presidio-analyzer/tests/test_email_recognizer.py",
    "iban": "presidio-analyzer/tests/test_iban_recognizer.py",
    "ip": "presidio-analyzer/tests/test_ip_recognizer.py",
    "phone": "presidio-analyzer/tests/test_phone_recognizer.py",
    "phone_tr": "presidio-analyzer/tests/test_tr_phone_number_recognizer.py",
}
# the regions each Presidio phone test configures (PhoneRecognizer's defaults are
# US, UK, DE, FR, IL, IN, CA, BR; "UK" is no ISO region: GB)
PRESIDIO_DEFAULT = ["US", "GB", "DE", "FR", "IL", "IN", "CA", "BR"]
REGIONS = {"test_when_all_phones_then_succeed": PRESIDIO_DEFAULT + ["JP", "CN"],
           "test_when_phone_with_leniency_then_succeed": PRESIDIO_DEFAULT,
           "test_when_phone_with_textual_explanation_then_succeed": PRESIDIO_DEFAULT,
           "test_when_phone_in_text_then_all_phones_found": ["TR"]}


def literal(node: ast.AST):
    """``ast.literal_eval`` that also takes an f-string without placeholders."""
    if isinstance(node, ast.JoinedStr):
        return "".join(literal(v) for v in node.values)
    if isinstance(node, ast.Tuple):
        return tuple(literal(e) for e in node.elts)
    return ast.literal_eval(node)


def tables(source: str):
    """(test name, argument names, rows) of each parametrized test."""
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for dec in fn.decorator_list:
            if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize":
                names = [n.strip() for n in literal(dec.args[0]).split(",")]
                yield fn.name, names, [literal(row) for row in dec.args[1].elts]


def cases(kind: str, test: str, names: list[str], rows: list[tuple]):
    for row in rows:
        r = dict(zip(names, row))
        text = r.get("text", r.get("iban"))
        n = r["expected_len"]
        spans = [list(s) for s in r.get("expected_positions", r.get("expected_res", ()))]
        if n == 1 and not spans:
            spans = [[0, len(text)]]
        if len(spans) != n:
            continue
        if "leniency" in r and not (r["leniency"] == 1 or (r["leniency"] > 1 and n == 2)):
            continue
        case = {"kind": "phone" if kind.startswith("phone") else kind, "text": text, "spans": spans}
        if case["kind"] == "phone":
            case["regions"] = REGIONS[test]
        case["source"] = f"{Path(FILES[kind]).name}::{test}"
        yield case


def main() -> None:
    git_dir, rev = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "HEAD")
    commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", rev], capture_output=True, text=True,
                            check=True).stdout.strip()
    out = [{"source": "https://github.com/microsoft/presidio", "commit": commit, "licence": "MIT",
            "copyright": "Copyright (c) Presidio Contributors", "files": sorted(FILES.values())}]
    seen = set()
    for kind, path in FILES.items():
        source = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], capture_output=True,
                                text=True, check=True).stdout
        for test, names, rows in tables(source):
            for case in cases(kind, test, names, rows):
                key = (case["kind"], case["text"], json.dumps(case["spans"]))
                if key not in seen:
                    seen.add(key)
                    out.append(case)
    dest = Path(__file__).resolve().parents[1] / "tests" / "data" / "presidio_cases.jsonl"
    dest.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in out))
    print(f"{len(out) - 1} cases from {commit[:12]} -> {dest}")


if __name__ == "__main__":
    main()
