"""deploy/prometheus/rules through Prometheus' own tool (Debian's promtool):
`promtool check rules` on every rule file, `promtool test rules` on every
tests/prometheus/*_test.yml, and a check that every alert of the rules has a
unit test where it fires and one where it does not.

Run by CTest with PROMTOOL_PATH and ATTN_SOURCE_DIR."""

import glob
import os
import subprocess
import tempfile
import unittest

import yaml

SOURCE_DIR = os.environ.get(
    "ATTN_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PROMTOOL = os.environ.get("PROMTOOL_PATH", "/usr/bin/promtool")
RULE_FILES = sorted(glob.glob(os.path.join(SOURCE_DIR, "deploy", "prometheus", "rules", "*.yml")))
TEST_FILES = sorted(glob.glob(os.path.join(SOURCE_DIR, "tests", "prometheus", "*_test.yml")))


def promtool(*args):
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120,
                            check=False)
    return result.returncode, result.stdout + result.stderr


def rules_of(kind):
    """Every rule name of `kind` ("alert" or "record") in RULE_FILES."""
    names = []
    for path in RULE_FILES:
        with open(path, encoding="utf-8") as f:
            for group in yaml.safe_load(f)["groups"]:
                names += [rule[kind] for rule in group["rules"] if kind in rule]
    return names


class PrometheusRulesTest(unittest.TestCase):

    def test_there_are_rules_and_tests(self):
        self.assertGreaterEqual(len(RULE_FILES), 2, RULE_FILES)
        self.assertGreaterEqual(len(TEST_FILES), 1, TEST_FILES)

    def test_promtool_check_rules(self):
        code, output = promtool("check", "rules", *RULE_FILES)
        self.assertEqual(code, 0, output)

    def test_promtool_test_rules(self):
        code, output = promtool("test", "rules", *TEST_FILES)
        self.assertEqual(code, 0, output)
        self.assertEqual(output.count("SUCCESS"), len(TEST_FILES), output)

    def test_every_alert_is_tested_firing_and_silent(self):
        fires, silent = set(), set()
        for path in TEST_FILES:
            with open(path, encoding="utf-8") as f:
                for test in yaml.safe_load(f)["tests"]:
                    for case in test.get("alert_rule_test", []):
                        (fires if case.get("exp_alerts") else silent).add(case["alertname"])
        alerts = rules_of("alert")
        self.assertEqual(len(alerts), len(set(alerts)), alerts)
        self.assertGreaterEqual(len(alerts), 7)
        self.assertEqual(sorted(set(alerts) - fires), [], "alerts never tested firing")
        self.assertEqual(sorted(set(alerts) - silent), [], "alerts never tested silent")
        self.assertEqual(sorted((fires | silent) - set(alerts)), [], "tests of no alert")

    def test_a_wrong_expectation_fails(self):
        # promtool really compares: a copy of a test file (in a temporary directory, its
        # rule files made absolute) with one expected alert label changed must fail.
        path = TEST_FILES[0]
        with open(path, encoding="utf-8") as f:
            tests = yaml.safe_load(f)
        tests["rule_files"] = [os.path.join(os.path.dirname(path), rule)
                               for rule in tests["rule_files"]]
        code, output = self.run_copy(tests)
        self.assertEqual(code, 0, output)  # the copy as such passes
        case = next(c for t in tests["tests"] for c in t.get("alert_rule_test", [])
                    if c.get("exp_alerts"))
        case["exp_alerts"][0]["exp_labels"]["severity"] = "info"
        code, output = self.run_copy(tests)
        self.assertNotEqual(code, 0, output)
        self.assertIn("FAILED", output)

    @staticmethod
    def run_copy(tests):
        with tempfile.TemporaryDirectory(prefix="promtool_test_") as tmp:
            copy = os.path.join(tmp, "copy_test.yml")
            with open(copy, "w", encoding="utf-8") as f:
                yaml.safe_dump(tests, f)
            return promtool("test", "rules", copy)

if __name__ == "__main__":
    unittest.main()
