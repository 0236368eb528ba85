"""deploy/prometheus/alerts.yml checked by Prometheus's own tool: the rules and the config that
loads them are valid (`promtool check`), and the unit tests in alerts_test.yml pass
(`promtool test rules`), with a case where each alert fires and one where it does not.
Needs Debian's ``prometheus`` package (promtool); .ci/run installs it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                "(Debian: apt-get install prometheus; .ci/run installs it)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=120)


def alerts() -> set[str]:
    doc = yaml.safe_load((RULES / "alerts.yml").read_text())
    return {r["alert"] for g in doc["groups"] for r in g["rules"]}


def test_promtool_checks_the_rules_and_the_config_that_loads_them():
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in rules.stdout + rules.stderr
    config = promtool("check", "config", str(RULES.parent / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr


def test_promtool_unit_tests_pass_with_every_alert_firing_once_and_quiet_once():
    tests = yaml.safe_load((RULES / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    cases = [c for t in tests["tests"] for c in t["alert_rule_test"]]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fires == quiet == alerts(), (alerts() - fires, alerts() - quiet)
    for c in cases:  # what the operator reads is part of what is tested
        for a in c.get("exp_alerts", []):
            assert "Fix:" in a["exp_annotations"]["description"] and a["exp_annotations"]["summary"], c
    run = promtool("test", "rules", "alerts_test.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_promtool_unit_tests_fail_when_a_rule_changes(tmp_path):
    """The unit tests are not vacuous: the same tests against rules whose blocked-stage
    threshold never holds fail (the alert no longer fires where the tests expect it)."""
    text = (RULES / "alerts.yml").read_text()
    broken = text.replace("sum by (stage, reason) (prefstream_stage_blocked) > 0",
                          "sum by (stage, reason) (prefstream_stage_blocked) > 5")
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts_test.yml").write_text((RULES / "alerts_test.yml").read_text())
    run = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "PrefstreamStageBlocked" in run.stdout + run.stderr
