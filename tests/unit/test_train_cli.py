"""`prefstream train`'s arguments: a bad value or a base model that is not there is refused
with the fix (exit 2), before any model is loaded or the broker is asked."""
from __future__ import annotations

from streams.commands.cli import main


def run(capsys, monkeypatch, *argv: str) -> tuple[int, str]:
    monkeypatch.setenv("PREFSTREAM_BROKER", "127.0.0.1:1")
    rc = main(["train", "--objective", "math", "--policy", "tutor", *argv])
    return rc, capsys.readouterr().err


def test_bad_values_name_the_fix(capsys, monkeypatch, tmp_path):
    rc, err = run(capsys, monkeypatch, "--every", "0", "--base", str(tmp_path))
    assert rc == 2 and "--every, --rank and --batch must be at least 1" in err
    rc, err = run(capsys, monkeypatch, "--max-policy-lag", "-1", "--base", str(tmp_path))
    assert rc == 2 and "--max-policy-lag must be 0" in err
    rc, err = run(capsys, monkeypatch, "--sft-weight", "-1", "--base", str(tmp_path))
    assert rc == 2 and "--sft-weight must be 0" in err
    rc, err = run(capsys, monkeypatch, "--base", str(tmp_path / "nope.gguf"))
    assert rc == 2 and "nope.gguf: no such file or directory" in err


def test_missing_broker_names_the_variable(capsys, monkeypatch):
    monkeypatch.delenv("PREFSTREAM_BROKER", raising=False)
    assert main(["train", "--objective", "math", "--policy", "tutor"]) == 2
    assert "PREFSTREAM_BROKER" in capsys.readouterr().err
