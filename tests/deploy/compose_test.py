"""deploy/docker-compose.yml, checked without a container engine: parsed
with python3-yaml (anchors and all), every file it mounts exists, every attnd
flag is one attnd knows, and the services agree with each other and with the
files they mount (HAProxy's backends, Prometheus' targets and rules, Grafana's
data source and dashboards, the stop budget).

Run by CTest with ATTND_PATH and ATTN_SOURCE_DIR."""

import os
import re
import sys
import unittest

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from k8s_test import attnd_flags, parse_flags  # pylint: disable=wrong-import-position

SOURCE_DIR = os.environ.get("ATTN_SOURCE_DIR", os.path.join(HERE, "..", ".."))
DEPLOY = os.path.join(SOURCE_DIR, "deploy")
COMPOSE = os.path.join(DEPLOY, "docker-compose.yml")
REPLICAS = ["attnd1", "attnd2", "attnd3"]


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def seconds(duration):
    match = re.fullmatch(r"(\d+)s", str(duration))
    if match is None:
        raise AssertionError(f"duration {duration!r} is not N s")
    return int(match.group(1))


def mounts(service):
    """{container path: absolute host path} of a service's bind mounts."""
    result = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            result[target] = os.path.normpath(os.path.join(DEPLOY, source))
    return result


class ComposeTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.compose = load(COMPOSE)
        cls.services = cls.compose["services"]

    def test_services(self):
        self.assertEqual(sorted(self.services),
                         sorted(REPLICAS + ["haproxy", "prometheus", "grafana"]))

    def test_every_mounted_file_exists_read_only(self):
        for name, service in self.services.items():
            for volume in service.get("volumes", []):
                parts = volume.split(":")
                if not parts[0].startswith("."):
                    self.assertIn(parts[0], self.compose.get("volumes", {}), f"{name}: {volume}")
                    continue
                self.assertTrue(os.path.exists(os.path.join(DEPLOY, parts[0])),
                                f"{name}: {parts[0]} does not exist")
                self.assertEqual(parts[2:], ["ro"], f"{name}: {volume}")

    def test_replicas(self):
        known = attnd_flags()
        for name in REPLICAS:
            service = self.services[name]
            self.assertTrue(os.path.isfile(os.path.join(DEPLOY, service["build"]["context"],
                                                        service["build"]["dockerfile"])))
            flags = parse_flags(service["command"])
            self.assertEqual(sorted(set(flags) - known), [], name)
            self.assertEqual(flags["address"], "0.0.0.0:50051")
            self.assertEqual(flags["metrics_address"], "0.0.0.0:9464")
            # The shared stop budget: 5 s lame duck + 30 s drain inside 40 s.
            self.assertEqual((flags["lame_duck_s"], flags["shutdown_grace_s"]), ("5", "30"))
            self.assertEqual(service["stop_grace_period"], "40s")
            self.assertLess(int(flags["lame_duck_s"]) + int(flags["shutdown_grace_s"]),
                            seconds(service["stop_grace_period"]))
            self.assertEqual(int(flags["threads"]), service["cpus"])
            self.assertEqual(service["user"], "10001:10001")
            self.assertIs(service["read_only"], True)
            self.assertEqual(service["cap_drop"], ["ALL"])
            self.assertIn("--address=127.0.0.1:50051", service["healthcheck"]["test"])
            self.assertEqual(sorted(service["expose"]), ["50051", "9464"])
            self.assertNotIn("ports", service)  # reached through HAProxy only

    def test_haproxy_balances_the_replicas(self):
        haproxy = self.services["haproxy"]
        config = mounts(haproxy)["/usr/local/etc/haproxy/haproxy.cfg"]
        self.assertEqual(config, os.path.join(DEPLOY, "haproxy", "haproxy.cfg"))
        with open(config, encoding="utf-8") as f:
            text = f.read()
        backends = re.findall(r'^\s*server \S+ "\$\{(ATTND_\d)\}"', text, re.M)
        self.assertEqual(backends, ["ATTND_1", "ATTND_2", "ATTND_3"])
        environment = haproxy["environment"]
        self.assertEqual([environment[b] for b in backends], [f"{r}:50051" for r in REPLICAS])
        ports = {p.split(":")[1] for p in haproxy["ports"]}
        self.assertEqual(ports, {environment["ATTN_LB_PORT"], environment["ATTN_LB_STATS_PORT"]})
        for variable in ("ATTN_LB_PORT", "ATTN_LB_STATS_PORT"):
            self.assertIn("${%s-%s}" % (variable, environment[variable]), text)

    def test_prometheus_scrapes_every_replica_and_loads_the_rules(self):
        prometheus = self.services["prometheus"]
        files = mounts(prometheus)
        config_path = next(a.split("=", 1)[1] for a in prometheus["command"]
                           if a.startswith("--config.file="))
        config = load(files[config_path])
        self.assertEqual(files[config_path], os.path.join(DEPLOY, "prometheus", "prometheus.yml"))
        targets = {job["job_name"]: [t for s in job["static_configs"] for t in s["targets"]]
                   for job in config["scrape_configs"]}
        self.assertEqual(targets["attnd"], [f"{r}:9464" for r in REPLICAS])
        self.assertEqual(targets["haproxy"],
                         [f"haproxy:{self.services['haproxy']['environment']['ATTN_LB_STATS_PORT']}"])
        self.assertEqual(config["rule_files"], ["rules/*.yml"])
        rules_in_container = os.path.join(os.path.dirname(config_path), "rules")
        self.assertEqual(files[rules_in_container], os.path.join(DEPLOY, "prometheus", "rules"))

    def test_grafana_provisions_the_data_source_and_dashboard(self):
        grafana = self.services["grafana"]
        files = mounts(grafana)
        provisioning = files["/etc/grafana/provisioning"]
        sources = load(os.path.join(provisioning, "datasources", "prometheus.yml"))
        prometheus_port = self.services["prometheus"]["ports"][0].split(":")[1]
        self.assertEqual(sources["datasources"][0]["url"], f"http://prometheus:{prometheus_port}")
        providers = load(os.path.join(provisioning, "dashboards", "attnserve.yml"))
        path = providers["providers"][0]["options"]["path"]
        self.assertEqual(files[path], os.path.join(DEPLOY, "grafana", "dashboards"))
        home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        self.assertTrue(home.startswith(path + "/"))
        self.assertTrue(os.path.isfile(os.path.join(files[path], os.path.basename(home))))


if __name__ == "__main__":
    unittest.main()
