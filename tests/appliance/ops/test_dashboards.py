"""The shipped alert rules and Grafana dashboard: written by `appliance ops export-dashboards`, checked and
unit-tested by Prometheus's own promtool, and every metric they name exists in a live /metrics."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from appliance.cli.main import main

RULE_TESTS = Path(__file__).with_name("alerts.test.yml")
OUR_METRIC = re.compile(r"\b(vllm:[a-z_:]+|appliance_[a-z_]+|http_requests_total)\b")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs the Debian package prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus); CI installs it")
    return found


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dashboards") / "out"
    assert main(["ops", "export-dashboards", str(folder)]) == 0
    return folder


def test_export_writes_both_files_and_keeps_existing_ones(exported, capsys):
    assert sorted(p.name for p in exported.iterdir()) == ["appliance.grafana.json", "appliance.rules.yml"]
    (exported / "appliance.rules.yml").write_text("# the operator's edit\n")
    assert main(["ops", "export-dashboards", str(exported)]) == 1
    assert "already exist" in capsys.readouterr().err and "--force" not in (exported / "appliance.rules.yml").read_text()
    assert (exported / "appliance.rules.yml").read_text() == "# the operator's edit\n"
    assert main(["ops", "export-dashboards", str(exported), "--force"]) == 0
    assert "groups:" in (exported / "appliance.rules.yml").read_text()


def test_promtool_accepts_the_rules(exported):
    result = subprocess.run([promtool(), "check", "rules", str(exported / "appliance.rules.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout


def test_each_alert_fires_and_does_not_in_promtools_unit_tests():
    result = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert tested == set(alert_names())  # every shipped alert is seen firing


def alert_names() -> list[str]:
    rules = yaml.safe_load((files_dir() / "appliance.rules.yml").read_text())
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"]]


def files_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("appliance.ops") / "dashboards"))


def named_metrics() -> dict[str, set[str]]:
    rules = yaml.safe_load((files_dir() / "appliance.rules.yml").read_text())
    dashboard = json.loads((files_dir() / "appliance.grafana.json").read_text())
    exprs = {"rules": [r["expr"] for g in rules["groups"] for r in g["rules"]],
             "dashboard": [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
             + [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]}
    return {where: {m for e in found for m in OUR_METRIC.findall(e)} for where, found in exprs.items()}


def test_every_metric_the_rules_and_the_dashboard_name_is_in_a_live_metrics(live_server):
    families = {f.name for f in text_string_to_metric_families(httpx.get(live_server.metrics_url, timeout=5).text)}
    for where, names in named_metrics().items():
        assert len(names) > 10, where
        missing = {n for n in names if n not in families and not any(
            n.endswith(s) and n.removesuffix(s) in families for s in SUFFIXES)}
        assert not missing, f"the {where} name metrics /metrics lacks: {sorted(missing)}"
