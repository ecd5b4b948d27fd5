"""deploy/grafana and the names the deploy files use, against a real attnd.

DashboardTest: deploy/grafana/dashboards/attnserve.json is a well-formed
Grafana dashboard (ids, layout, the data source variable on every query) with
the panels operators need, and the provisioning files point Grafana at it.

MetricNamesTest: a real attnd on 127.0.0.1 gets calls of every outcome, then
every attnserve_* name used by the dashboard, the Prometheus rules and the
Kubernetes autoscaler is one attnd exports (histograms as their _bucket, _sum,
_count series), with the labels they select on; and a real Prometheus, loaded
with deploy/prometheus/prometheus.yml and its rules (prometheus_e2e_test's
helpers), answers every dashboard query and every recording rule with data.

Run by CTest with ATTN_PYTHON, PYTHONPATH=<build>/python, ATTND_PATH,
PROMETHEUS_PATH, PROMTOOL_PATH and ATTN_SOURCE_DIR."""

import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unittest
import urllib.parse

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from prometheus_e2e_test import (WAIT_S, AttndTestCase,  # pylint: disable=wrong-import-position
                                 PrometheusScrapeTest, http_get, send_traffic)

SOURCE_DIR = os.environ.get("ATTN_SOURCE_DIR", os.path.join(HERE, "..", ".."))
DASHBOARD = os.path.join(SOURCE_DIR, "deploy", "grafana", "dashboards", "attnserve.json")
PROVISIONING = os.path.join(SOURCE_DIR, "deploy", "grafana", "provisioning")
RULE_FILES = sorted(glob.glob(os.path.join(SOURCE_DIR, "deploy", "prometheus", "rules", "*.yml")))
K8S = os.path.join(SOURCE_DIR, "deploy", "k8s")

# An attnserve_* metric name, not part of a recording rule's level:name:ops.
_NAME = re.compile(r"(?<![\w:])(attnserve_[a-z0-9_]+)(?![\w:])")
# A selector: name{label op "value", ...}.
_SELECTOR = re.compile(r"(?<![\w:])(attnserve_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
# Grafana's variables as a test run replaces them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".+", "$instance": ".+", "$rpc": ".+"}
# Queries with no data in this test: container metrics come from cAdvisor, not attnd.
MAY_BE_EMPTY = ("container_cpu_usage_seconds_total",)


def load_dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def dashboard_queries():
    """(panel title, expr) of every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in load_dashboard()["panels"]
            for target in panel.get("targets", [])]


def rule_expressions():
    """(rule name, expr) of every rule, and the set of recorded names."""
    rules = []
    for path in RULE_FILES:
        with open(path, encoding="utf-8") as f:
            for group in yaml.safe_load(f)["groups"]:
                rules += [(rule.get("alert") or rule["record"], rule["expr"])
                          for rule in group["rules"]]
    return rules


def k8s_metric_expressions():
    """The HPA's Pods metric names and the prometheus-adapter series queries."""
    with open(os.path.join(K8S, "hpa.yaml"), encoding="utf-8") as f:
        hpa = yaml.safe_load(f)
    names = [("hpa", m["pods"]["metric"]["name"]) for m in hpa["spec"]["metrics"]
             if m["type"] == "Pods"]
    with open(os.path.join(K8S, "optional", "prometheus-adapter.yaml"), encoding="utf-8") as f:
        adapter = yaml.safe_load(f)
    return names + [("prometheus-adapter", r["seriesQuery"]) for r in adapter["rules"]]


def substitute(expr):
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


class DashboardTest(unittest.TestCase):

    def test_panels_are_laid_out_and_queried_through_the_variable(self):
        dashboard = load_dashboard()
        self.assertEqual(dashboard["uid"], "attnserve")
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        ids, titles, cells = set(), set(), set()
        for panel in dashboard["panels"]:
            self.assertNotIn(panel["id"], ids)
            ids.add(panel["id"])
            grid = panel["gridPos"]
            self.assertLessEqual(grid["x"] + grid["w"], 24, panel["title"])
            for x in range(grid["x"], grid["x"] + grid["w"]):  # no two panels overlap
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    self.assertNotIn((x, y), cells, panel["title"])
                    cells.add((x, y))
            if panel["type"] == "row":
                continue
            self.assertNotIn(panel["title"], titles)
            titles.add(panel["title"])
            self.assertTrue(panel.get("description"), panel["title"])
            self.assertEqual(panel["datasource"], {"type": "prometheus", "uid": "${datasource}"})
            self.assertTrue(panel["targets"], panel["title"])
            for target in panel["targets"]:
                self.assertEqual(target["datasource"], panel["datasource"])
                self.assertTrue(target["expr"].strip())

    def test_the_panels_the_issue_asks_for(self):
        queries = dashboard_queries()

        def panels_using(pattern):
            return {title for title, expr in queries if re.search(pattern, expr)}

        self.assertTrue(panels_using(r"sum by \(rpc, code\) \(rate\(attnserve_requests_total"))
        self.assertTrue(panels_using(r"sum by \(method\) \(rate\(attnserve_requests_total"))
        for quantile in ("0.5", "0.9", "0.99"):
            self.assertTrue(panels_using(rf"histogram_quantile\({quantile}, sum by \(le\) "
                                         r"\(rate\(attnserve_request_duration_seconds_bucket"))
        self.assertTrue(panels_using(r"attnserve_batch_size_bucket"))
        self.assertTrue(panels_using(r"attnserve_queue_depth"))
        self.assertTrue(panels_using(r"attnserve_inflight_requests"))
        cpu = [p for p in load_dashboard()["panels"]
               if any("container_cpu_usage_seconds_total" in t["expr"]
                      for t in p.get("targets", []))]
        self.assertEqual(len(cpu), 1)
        self.assertIn("container_cpu_usage_seconds_total", cpu[0]["description"])
        self.assertIn("container runtime", cpu[0]["description"])

    def test_provisioning_points_at_the_dashboard(self):
        with open(os.path.join(PROVISIONING, "dashboards", "attnserve.yml"),
                  encoding="utf-8") as f:
            providers = yaml.safe_load(f)
        self.assertEqual(providers["apiVersion"], 1)
        self.assertEqual([p["type"] for p in providers["providers"]], ["file"])
        self.assertEqual(providers["providers"][0]["options"]["path"],
                         "/var/lib/grafana/dashboards")
        with open(os.path.join(PROVISIONING, "datasources", "prometheus.yml"),
                  encoding="utf-8") as f:
            sources = yaml.safe_load(f)
        self.assertEqual(sources["apiVersion"], 1)
        self.assertEqual([(s["type"], s["isDefault"]) for s in sources["datasources"]],
                         [("prometheus", True)])


class MetricNamesTest(AttndTestCase):
    """Names and labels against a real attnd, queries against a real Prometheus."""

    start_prometheus = PrometheusScrapeTest.start_prometheus
    stop = staticmethod(PrometheusScrapeTest.stop)

    def exported(self):
        """{series name: set of label names} in attnd's /metrics after traffic."""
        series = {}
        for line in http_get(self.metrics_url)[1].splitlines():
            match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
            if match:
                labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or ""))
                series.setdefault(match.group(1), set()).update(labels)
        return series

    def test_every_name_and_label_used_is_exported(self):
        send_traffic(self.client)
        exported = self.exported()
        uses = ([("dashboard " + t, e) for t, e in dashboard_queries()] +
                [("rule " + n, e) for n, e in rule_expressions()] + k8s_metric_expressions())
        names = set()
        for where, expr in uses:
            for name in _NAME.findall(expr):
                names.add(name)
                self.assertTrue(name in exported, f"{where}: {name} is not exported by attnd")
            for name, matchers in _SELECTOR.findall(expr):
                for label, _ in _MATCHER.findall(matchers):
                    if label in ("job", "instance", "namespace", "pod"):  # added by scraping
                        continue
                    self.assertIn(label, exported.get(name, set()),
                                  f"{where}: {name} has no label {label}")
        # Every family the issue names is used somewhere.
        for family in ("attnserve_requests_total", "attnserve_request_duration_seconds_bucket",
                       "attnserve_batch_size_bucket", "attnserve_queue_depth",
                       "attnserve_inflight_requests", "attnserve_queue_capacity",
                       "attnserve_dropped_requests_total"):
            self.assertIn(family, names)

    def query(self, base, expr):
        url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = json.loads(http_get(url)[1])
        self.assertEqual(answer["status"], "success", f"{expr}: {answer}")
        return answer["data"]["result"]

    def test_prometheus_answers_every_dashboard_query_and_rule(self):
        tmp = tempfile.mkdtemp(prefix="dashboard_test_")
        self.addCleanup(shutil.rmtree, tmp, True)
        base = self.start_prometheus(tmp)
        send_traffic(self.client)
        records = [n for n, e in rule_expressions() if ":" in n]
        queries = [(t, substitute(e)) for t, e in dashboard_queries()] + [(r, r) for r in records]
        for title, expr in queries:
            self.assertNotIn("$", expr, f"{title}: a Grafana variable left unreplaced")
        pending = {expr: title for title, expr in queries
                   if not any(m in expr for m in MAY_BE_EMPTY)}
        deadline = time.monotonic() + WAIT_S
        while pending and time.monotonic() < deadline:
            for expr in list(pending):
                if self.query(base, expr):
                    del pending[expr]
            time.sleep(0.5)
        self.assertEqual(pending, {}, "queries still without data")
        for title, expr in queries:  # the rest parse and run
            self.query(base, expr)
        # The alerts loaded: Prometheus lists every one of the rule files.
        rules = json.loads(http_get(base + "/api/v1/rules")[1])["data"]["groups"]
        loaded = {r["name"] for g in rules for r in g["rules"]}
        self.assertEqual(loaded, {n for n, _ in rule_expressions()})


if __name__ == "__main__":
    unittest.main()
