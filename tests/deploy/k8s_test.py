"""deploy/k8s, the kustomize base, checked against the Kubernetes API.

`kubectl kustomize` (Debian's kubernetes-client, or any kubectl) renders the
base offline; every object is then
- deserialized into its model from Debian's python3-kubernetes (22.6, the
  Kubernetes 1.22 API) by the client's own ApiClient deserializer, which
  checks required fields and enum values, and
- walked key by key against that model's attributes at every level, so an
  unknown (misspelt) field fails: the deserializer alone ignores it.
Fields newer than 1.22 that the manifests use are described in this file
(NEWER_FIELDS, NEWER_KINDS). Then the objects are checked against each other
and against attnd itself: every flag is one attnd knows, cpu = --threads
whole cores, the stop budget fits the grace period, probes, Services, HPA,
PDB and NetworkPolicy select the pods and name their ports.

Run by CTest with KUBECTL_PATH, ATTND_PATH and ATTN_SOURCE_DIR."""

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import kubernetes.client
import yaml

SOURCE_DIR = os.environ.get(
    "ATTN_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
KUBECTL = os.environ.get("KUBECTL_PATH", "kubectl")
BASE = os.path.join(SOURCE_DIR, "deploy", "k8s")
OPTIONAL = os.path.join(BASE, "optional")

# The model of each (apiVersion, kind) the base may hold.
MODELS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    # autoscaling/v2 (GA in 1.23) has the schema of autoscaling/v2beta2, which 22.6 has.
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2beta2HorizontalPodAutoscaler",
}
# Fields added after Kubernetes 1.22: model -> {JSON key: type}.
NEWER_FIELDS = {
    # Native gRPC probes: alpha 1.23, beta 1.24 (on by default), GA 1.27.
    "V1Probe": {"grpc": "GRPCAction"},
}
# Types that 22.6 does not have: name -> {JSON key: (type, required)}.
NEWER_KINDS = {
    "GRPCAction": {"port": ("int", True), "service": ("str", False)},
}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
POD_LABELS = {"app.kubernetes.io/name": "attnserve", "app.kubernetes.io/component": "attnd"}
GRPC_PORT, METRICS_PORT = 50051, 9464


def kustomize(directory):
    """The objects `kubectl kustomize directory` renders (a fresh copy each time)."""
    return copy.deepcopy(_rendered(directory))


@functools.lru_cache(maxsize=None)
def _rendered(directory):
    result = subprocess.run([KUBECTL, "kustomize", directory], capture_output=True, text=True,
                            timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [o for o in yaml.safe_load_all(result.stdout) if o is not None]


def field_errors(value, type_name, path):
    """Every place in `value` that does not fit `type_name` (a python3-kubernetes
    type string such as 'V1Probe', 'list[V1Container]', 'dict(str, str)' or a
    NEWER_KINDS name), as 'path: what' strings."""
    if value is None:
        return []
    match = re.fullmatch(r"list\[(.+)\]", type_name)
    if match:
        if not isinstance(value, list):
            return [f"{path}: a list expected, got {type(value).__name__}"]
        return [e for i, item in enumerate(value)
                for e in field_errors(item, match.group(1), f"{path}[{i}]")]
    match = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if match:
        if not isinstance(value, dict):
            return [f"{path}: a map expected, got {type(value).__name__}"]
        return [e for k, item in value.items()
                for e in field_errors(item, match.group(1), f"{path}.{k}")]
    if type_name in PRIMITIVES:
        wanted = PRIMITIVES[type_name]
        if isinstance(value, bool) and type_name != "bool" and type_name != "object":
            return [f"{path}: {type_name} expected, got a bool"]
        if not isinstance(value, wanted):
            return [f"{path}: {type_name} expected, got {type(value).__name__} {value!r}"]
        return []
    if type_name in NEWER_KINDS:
        fields = NEWER_KINDS[type_name]
        if not isinstance(value, dict):
            return [f"{path}: an object ({type_name}) expected"]
        errors = [f"{path}.{k}: not a field of {type_name} (fields: {sorted(fields)})"
                  for k in value if k not in fields]
        errors += [f"{path}.{k}: required by {type_name}" for k, (_, required) in
                   fields.items() if required and k not in value]
        return errors + [e for k, v in value.items() if k in fields
                         for e in field_errors(v, fields[k][0], f"{path}.{k}")]
    model = getattr(kubernetes.client.models, type_name, None)
    if model is None:
        return [f"{path}: no model {type_name} (describe it in NEWER_KINDS)"]
    if not isinstance(value, dict):
        return [f"{path}: an object ({type_name}) expected, got {type(value).__name__}"]
    fields = {json_key: model.openapi_types[attr] for attr, json_key in
              model.attribute_map.items()}
    fields.update(NEWER_FIELDS.get(type_name, {}))
    errors = []
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: not a field of {type_name}")
        else:
            errors += field_errors(item, fields[key], f"{path}.{key}")
    return errors


class _Response:  # what ApiClient.deserialize reads: .data, JSON text
    def __init__(self, obj):
        self.data = json.dumps(obj)


def validation_errors(obj):
    """Why `obj` (one rendered object) is not a valid object of its kind, or []."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    model = MODELS.get((obj.get("apiVersion"), obj.get("kind")))
    if model is None:
        return [f"{name}: apiVersion {obj.get('apiVersion')} kind {obj.get('kind')} is not "
                f"one this test knows (MODELS)"]
    try:
        kubernetes.client.ApiClient().deserialize(_Response(obj), model)
    except (ValueError, TypeError) as error:
        return [f"{name}: {model} rejects it: {error}"]
    return field_errors(obj, model, name)


def attnd_flags():
    """The flag names attnd accepts (from --helpfull)."""
    result = subprocess.run([os.environ["ATTND_PATH"], "--helpfull"], capture_output=True,
                            text=True, timeout=30, check=False)
    flags = set(re.findall(r"^\s+--([a-z_0-9]+) \(", result.stdout + result.stderr, re.M))
    if "threads" not in flags:
        raise AssertionError(f"attnd --helpfull lists no --threads:\n{result.stdout}")
    return flags


def parse_flags(args):
    flags = {}
    for arg in args:
        if re.fullmatch(r"--[a-z_0-9]+", arg):  # a boolean flag
            flags[arg[2:]] = "true"
            continue
        match = re.fullmatch(r"--([a-z_0-9]+)=(.*)", arg)
        if match is None:
            raise AssertionError(f"attnd argument {arg!r} is not --name=value")
        flags[match.group(1)] = match.group(2)
    return flags


def cores(quantity):
    """Whole cores of a cpu quantity ("2", "2000m"), or None if not whole."""
    text = str(quantity)
    millis = int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)
    return millis // 1000 if millis % 1000 == 0 else None


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


class SchemaTest(unittest.TestCase):
    """The validator itself: it accepts the base and catches misspellings."""

    @classmethod
    def setUpClass(cls):
        cls.objects = kustomize(BASE)

    def test_every_object_of_the_base_is_valid(self):
        kinds = sorted(o["kind"] for o in self.objects)
        self.assertEqual(kinds, ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                                 "PodDisruptionBudget", "Service", "Service"])
        for obj in self.objects:
            self.assertEqual(validation_errors(obj), [], obj["metadata"]["name"])

    def mutated(self, kind, mutate):
        obj = copy.deepcopy(next(o for o in self.objects if o["kind"] == kind))
        mutate(obj)
        return validation_errors(obj)

    def test_a_misspelt_field_fails_at_every_level(self):
        def container(obj):
            return obj["spec"]["template"]["spec"]["containers"][0]

        def rename(mapping, old, new):
            mapping[new] = mapping.pop(old)

        cases = [
            ("Deployment", lambda o: rename(o["spec"], "replicas", "replica"),
             "Deployment/attnd.spec.replica: not a field of V1DeploymentSpec"),
            ("Deployment", lambda o: rename(container(o), "readinessProbe", "readynessProbe"),
             ".containers[0].readynessProbe: not a field of V1Container"),
            ("Deployment", lambda o: rename(container(o)["livenessProbe"]["grpc"], "port",
                                            "prot"),
             ".livenessProbe.grpc.prot: not a field of GRPCAction"),
            ("Deployment", lambda o: rename(container(o)["securityContext"],
                                            "readOnlyRootFilesystem", "readOnlyRootFileSystem"),
             "readOnlyRootFileSystem: not a field of V1SecurityContext"),
            ("HorizontalPodAutoscaler",
             lambda o: rename(o["spec"]["metrics"][1]["pods"]["target"], "averageValue",
                              "averageValues"),
             "averageValues: not a field of V2beta2MetricTarget"),
            ("NetworkPolicy", lambda o: rename(o["spec"]["ingress"][1]["from"][0],
                                               "podSelector", "podSelectors"),
             "podSelectors: not a field of V1NetworkPolicyPeer"),
            ("Deployment", lambda o: container(o)["ports"][0].update(containerPort="50051"),
             "containerPort: int expected, got str"),
        ]
        for kind, mutate, expected in cases:
            errors = self.mutated(kind, mutate)
            self.assertTrue(any(expected in e for e in errors), (expected, errors))

    def test_a_missing_required_field_or_bad_enum_fails(self):
        errors = self.mutated("Deployment",
                              lambda o: o["spec"]["template"]["spec"]["containers"][0].pop("name"))
        self.assertTrue(any("V1Deployment rejects it" in e and "name" in e for e in errors),
                        errors)
        errors = self.mutated("Deployment",
                              lambda o: o["spec"]["template"]["spec"]["containers"][0]
                              ["livenessProbe"]["grpc"].pop("port"))
        self.assertTrue(any("grpc.port: required by GRPCAction" in e for e in errors), errors)
        errors = self.mutated("Service", lambda o: o.update(kind="Servic"))
        self.assertTrue(any("is not one this test knows" in e for e in errors), errors)


class ManifestTest(unittest.TestCase):
    """The objects agree with each other, with attnd and with the shared stop budget."""

    @classmethod
    def setUpClass(cls):
        cls.objects = kustomize(BASE)
        cls.by_kind = {}
        for obj in cls.objects:
            cls.by_kind.setdefault(obj["kind"], []).append(obj)
        cls.deployment = cls.by_kind["Deployment"][0]
        cls.pod = cls.deployment["spec"]["template"]
        cls.container = cls.pod["spec"]["containers"][0]
        cls.ports = {p["name"]: p["containerPort"] for p in cls.container["ports"]}
        cls.flags = parse_flags(cls.container["args"])

    def test_every_flag_is_an_attnd_flag(self):
        known = attnd_flags()
        self.assertEqual(sorted(set(self.flags) - known), [])

    def test_ports_and_addresses(self):
        self.assertEqual(self.ports, {"grpc": GRPC_PORT, "metrics": METRICS_PORT})
        self.assertEqual(self.flags["address"], f"0.0.0.0:{GRPC_PORT}")
        self.assertEqual(self.flags["metrics_address"], f"0.0.0.0:{METRICS_PORT}")
        annotations = self.pod["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        self.assertEqual(annotations["prometheus.io/port"], str(METRICS_PORT))
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")

    def test_cpu_is_threads_whole_cores_and_requests_equal_limits(self):
        resources = self.container["resources"]
        self.assertEqual(resources["requests"], resources["limits"])
        threads = int(self.flags["threads"])
        self.assertEqual(cores(resources["limits"]["cpu"]), threads)
        self.assertLessEqual(int(self.flags["batch_threads"]), threads)
        self.assertIn("memory", resources["limits"])

    def test_stop_budget_fits_the_grace_period(self):
        self.assertEqual(self.flags["lame_duck_s"], "5")
        self.assertEqual(self.flags["shutdown_grace_s"], "30")
        grace = self.pod["spec"]["terminationGracePeriodSeconds"]
        self.assertEqual(grace, 45)
        self.assertGreater(grace, int(self.flags["lame_duck_s"]) +
                           int(self.flags["shutdown_grace_s"]))

    def test_probes_ask_the_grpc_health_service(self):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertEqual(self.container[probe]["grpc"], {"port": self.ports["grpc"]}, probe)

    def test_hardened(self):
        pod_security = self.pod["spec"]["securityContext"]
        self.assertIs(pod_security["runAsNonRoot"], True)
        self.assertEqual(pod_security["runAsUser"], 10001)
        self.assertEqual(pod_security["seccompProfile"], {"type": "RuntimeDefault"})
        security = self.container["securityContext"]
        self.assertIs(security["readOnlyRootFilesystem"], True)
        self.assertIs(security["allowPrivilegeEscalation"], False)
        self.assertEqual(security["capabilities"], {"drop": ["ALL"]})

    def test_selectors_match_the_pods(self):
        labels = self.pod["metadata"]["labels"]
        self.assertEqual(labels, POD_LABELS)
        self.assertEqual(self.deployment["spec"]["selector"]["matchLabels"], POD_LABELS)
        for spread in self.pod["spec"]["topologySpreadConstraints"]:
            self.assertTrue(selects(spread["labelSelector"]["matchLabels"], labels))
        pdb = self.by_kind["PodDisruptionBudget"][0]
        self.assertTrue(selects(pdb["spec"]["selector"]["matchLabels"], labels))
        policy = self.by_kind["NetworkPolicy"][0]
        self.assertTrue(selects(policy["spec"]["podSelector"]["matchLabels"], labels))

    def test_services(self):
        services = {s["metadata"]["name"]: s for s in self.by_kind["Service"]}
        self.assertEqual(sorted(services), ["attnd", "attnd-headless"])
        self.assertEqual(services["attnd"]["spec"]["type"], "ClusterIP")
        self.assertEqual(services["attnd-headless"]["spec"]["clusterIP"], "None")
        for service in services.values():
            self.assertTrue(selects(service["spec"]["selector"], self.pod["metadata"]["labels"]))
            for port in service["spec"]["ports"]:
                self.assertEqual(port["port"], self.ports[port["targetPort"]], port)
            grpc = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
            self.assertEqual(len(grpc), 1)

    def test_hpa_scales_the_deployment_on_cpu_and_inflight(self):
        hpa = self.by_kind["HorizontalPodAutoscaler"][0]["spec"]
        self.assertEqual(hpa["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": self.deployment["metadata"]["name"]})
        self.assertLessEqual(self.deployment["spec"]["replicas"], hpa["maxReplicas"])
        self.assertGreaterEqual(hpa["minReplicas"], 2)  # the PDB's maxUnavailable 1 needs 2
        metrics = {m["type"]: m for m in hpa["metrics"]}
        self.assertEqual(metrics["Resource"]["resource"]["name"], "cpu")
        self.assertEqual(metrics["Pods"]["pods"]["metric"]["name"], "attnserve_inflight_requests")

    def test_network_policy_lets_in_grpc_from_the_cluster_and_metrics_from_prometheus(self):
        rules = self.by_kind["NetworkPolicy"][0]["spec"]
        self.assertEqual(rules["policyTypes"], ["Ingress"])
        allowed = {}
        for rule in rules["ingress"]:
            for port in rule["ports"]:
                allowed[port["port"]] = rule["from"]
        self.assertEqual(sorted(allowed), sorted([GRPC_PORT, METRICS_PORT]))
        self.assertEqual(allowed[GRPC_PORT], [{"namespaceSelector": {}}])
        self.assertEqual(allowed[METRICS_PORT], [
            {"namespaceSelector": {},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}])

    def test_image_by_tag(self):
        self.assertRegex(self.container["image"], r"^attnserve:\d+\.\d+\.\d+$")


class OptionalTest(unittest.TestCase):
    """deploy/k8s/optional: the CPU-only HPA patch in an overlay, the
    ServiceMonitor and the prometheus-adapter rule."""

    def test_cpu_only_overlay(self):
        tmp = tempfile.mkdtemp(prefix="k8s_overlay_")
        self.addCleanup(shutil.rmtree, tmp, True)
        shutil.copy(os.path.join(OPTIONAL, "hpa-cpu-only.yaml"), tmp)
        with open(os.path.join(tmp, "kustomization.yaml"), "w", encoding="utf-8") as f:
            # kustomize v2 wants a relative base and the patch below the overlay.
            yaml.safe_dump({"bases": [os.path.relpath(BASE, tmp)], "patchesJson6902": [{
                "target": {"group": "autoscaling", "version": "v2",
                           "kind": "HorizontalPodAutoscaler", "name": "attnd"},
                "path": "hpa-cpu-only.yaml"}]}, f)
        objects = kustomize(tmp)
        for obj in objects:
            self.assertEqual(validation_errors(obj), [])
        hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
        self.assertEqual([m["type"] for m in hpa["spec"]["metrics"]], ["Resource"])

    def test_service_monitor_selects_the_clusterip_service_metrics_port(self):
        with open(os.path.join(OPTIONAL, "servicemonitor.yaml"), encoding="utf-8") as f:
            monitor = yaml.safe_load(f)
        self.assertEqual(monitor["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(monitor["kind"], "ServiceMonitor")
        self.assertEqual(sorted(monitor["spec"]), ["endpoints", "selector"])
        services = [o for o in kustomize(BASE) if o["kind"] == "Service"]
        chosen = [s for s in services
                  if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        self.assertEqual([s["metadata"]["name"] for s in chosen], ["attnd"])
        port_names = [p["name"] for p in chosen[0]["spec"]["ports"]]
        for endpoint in monitor["spec"]["endpoints"]:
            self.assertLessEqual(set(endpoint), {"port", "path", "interval", "scrapeTimeout"})
            self.assertIn(endpoint["port"], port_names)
            self.assertEqual(endpoint["path"], "/metrics")

    def test_adapter_rule_serves_the_hpa_metric(self):
        with open(os.path.join(OPTIONAL, "prometheus-adapter.yaml"), encoding="utf-8") as f:
            rules = yaml.safe_load(f)["rules"]
        hpa = next(o for o in kustomize(BASE) if o["kind"] == "HorizontalPodAutoscaler")
        wanted = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                  if m["type"] == "Pods"]
        served = [r["name"]["as"] for r in rules]
        self.assertEqual(served, wanted)
        for rule in rules:
            self.assertTrue(rule["seriesQuery"].startswith(rule["name"]["as"] + "{"))
            self.assertEqual(sorted(rule["resources"]["overrides"]), ["namespace", "pod"])


if __name__ == "__main__":
    unittest.main()
