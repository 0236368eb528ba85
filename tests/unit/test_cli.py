import json
import subprocess
import sys

from streams.commands.cli import main


def test_unknown_input_line_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + json.dumps({"txt": 1}) + "\n")
    assert main(["run", "--input", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "unknown format" in err


def test_missing_broker_names_the_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PREFSTREAM_BROKER", raising=False)
    assert main(["tap", "--out", str(tmp_path)]) == 2
    assert "PREFSTREAM_BROKER" in capsys.readouterr().err


def test_missing_objective_file(tmp_path, capsys):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"prompt": "hi"}) + "\n")
    assert main(["run", "--input", str(f), "--objective", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_broker_command_prints_address_first_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "streams.commands.cli", "broker"], stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().strip()
        host, port = first.split(":")
        assert host == "127.0.0.1" and int(port) > 0
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
