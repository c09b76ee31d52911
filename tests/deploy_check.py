"""Validates deploy/: what a fleet install relies on, checked without a container engine.

- every YAML file parses, the dashboard JSON parses and each panel has a query;
- deploy/compose.yaml against the Compose specification's schema (check-jsonschema's vendored
  copy), and its shape: two Switchyard replicas behind the load balancer (whose config names
  both), PostgreSQL, Prometheus scraping both, Grafana with the dashboard provisioned, configs
  mounted read-only, secrets only from the environment;
- every Kubernetes manifest against the Kubernetes schema (kubernetes-validate), and its
  shape: probes, resources, non-root with a read-only root filesystem, a Service per
  listener, the ConfigMap's proxy.toml valid (`switchyard check`), secrets from the Secret,
  PDB, HPA, and terminationGracePeriodSeconds above drain_delay + drain_timeout;
- checkov on the manifests and the Dockerfile: no failed check (skips carry their reason).

Run by tests/run-all.sh (step `deploy`) with the deploy venv's Python.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
BIN = os.environ.get("SWITCHYARD_BIN", "target/debug/switchyard")
SECRET_WORDS = ("PASSWORD", "TOKEN", "KEY", "SECRET")

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print(f"FAIL: {what}")


def run(*args, **kw):
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, **kw)


def duration_seconds(s):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", s)
    if not m:
        raise ValueError(f"duration {s!r}")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def switchyard_check(toml_text, label):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml_text)
        path = f.name
    env = dict(os.environ)
    env.update(
        SWITCHYARD_STATE_URL="postgres://switchyard@postgres:5432/switchyard",
        SWITCHYARD_ADMIN_TOKEN="check-only",
    )
    r = subprocess.run([str(ROOT / BIN), "check", "--config", path], capture_output=True, text=True, env=env)
    os.unlink(path)
    check(r.returncode == 0, f"{label}: switchyard check failed: {r.stdout}{r.stderr}")


# --- every file parses ---------------------------------------------------------------------
yaml_files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
docs = {}
for p in yaml_files:
    try:
        docs[p] = list(yaml.safe_load_all(p.read_text()))
    except yaml.YAMLError as e:
        check(False, f"{p.relative_to(ROOT)} does not parse: {e}")
check(len(yaml_files) >= 15, f"expected the deploy YAML files, found {len(yaml_files)}")

dashboard = json.loads((DEPLOY / "grafana/dashboards/switchyard.json").read_text())
panels = dashboard.get("panels", [])
check(len(panels) >= 10, "the dashboard has its panels")
for p in panels:
    exprs = [t.get("expr", "") for t in p.get("targets", [])]
    check(exprs and all(e.strip() for e in exprs), f"panel {p.get('title')!r} has a query")
    check(p.get("datasource", {}).get("uid") == "prometheus", f"panel {p.get('title')!r} uses the provisioned datasource")
ds = docs[DEPLOY / "grafana/provisioning/datasources/prometheus.yaml"][0]["datasources"]
check(any(d.get("uid") == "prometheus" and d.get("type") == "prometheus" for d in ds), "the datasource uid the panels name is provisioned")
prov = docs[DEPLOY / "grafana/provisioning/dashboards/switchyard.yaml"][0]["providers"][0]
dash_dir = prov["options"]["path"]

# --- the compose file ----------------------------------------------------------------------
r = run(str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "deploy/compose.yaml")
check(r.returncode == 0, f"compose.yaml against the Compose specification: {r.stdout}{r.stderr}")
compose = docs[DEPLOY / "compose.yaml"][0]
services = compose["services"]
replicas = [n for n, s in services.items() if s.get("image", "").startswith("switchyard")]
check(len(replicas) >= 2, f"two Switchyard replicas, found {replicas}")
nginx = (DEPLOY / "nginx/nginx.conf").read_text()
lb = [n for n, s in services.items() if s.get("image", "").startswith(("nginx", "haproxy", "envoyproxy"))]
check(len(lb) == 1, "one load balancer")
for n in replicas:
    check(f"server {n}:8080" in nginx, f"the load balancer sends API traffic to {n}")
    s = services[n]
    check(s.get("read_only") is True, f"{n}: read-only root filesystem")
    check(any(v.startswith("./proxy.fleet.toml:") and v.endswith(":ro") for v in s.get("volumes", [])), f"{n}: proxy.toml mounted read-only")
    for k, v in s.get("environment", {}).items():
        if any(w in k for w in SECRET_WORDS):
            check("${" in str(v), f"{n}: {k} comes from the environment, not the file")
    grace = duration_seconds(s.get("stop_grace_period", "10s"))
    check(grace > 30, f"{n}: stop_grace_period above drain_timeout")
for name in ("postgres", "prometheus", "grafana"):
    check(name in services, f"compose runs {name}")
prom_compose = docs[DEPLOY / "prometheus/prometheus.yml"][0]
targets = [t for sc in prom_compose["scrape_configs"] for st in sc.get("static_configs", []) for t in st["targets"]]
for n in replicas:
    check(f"{n}:9090" in targets, f"Prometheus scrapes {n}'s admin listener")
mounts = services["prometheus"].get("volumes", [])
check(any("switchyard.rules.yml" in m for m in mounts), "Prometheus loads the rules")
gmounts = services["grafana"].get("volumes", [])
check(any(m.startswith("./grafana/provisioning:") for m in gmounts), "Grafana provisioning mounted")
check(any(m.startswith("./grafana/dashboards:") and dash_dir in m for m in gmounts), "the dashboard mounted where the provider reads")
for k, v in services["grafana"].get("environment", {}).items():
    if any(w in k for w in SECRET_WORDS):
        check("${" in str(v), f"grafana: {k} comes from the environment")
switchyard_check((DEPLOY / "proxy.fleet.toml").read_text(), "deploy/proxy.fleet.toml")

# --- Kubernetes ----------------------------------------------------------------------------
k8s_dir = DEPLOY / "kubernetes"
manifests = sorted(p for p in k8s_dir.glob("*.yaml") if p.name != "kustomization.yaml")
r = run(str(VENV_BIN / "kubernetes-validate"), "--strict", *[str(p.relative_to(ROOT)) for p in manifests])
check(r.returncode == 0, f"kubernetes-validate: {r.stdout}{r.stderr}")
kust = docs[k8s_dir / "kustomization.yaml"][0]
for res in kust["resources"]:
    check((k8s_dir / res).exists(), f"kustomization resource {res} exists")
objs = {}
for p in manifests:
    for d in docs[p]:
        if d:
            objs[(d["kind"], d["metadata"]["name"])] = d
dep = objs[("Deployment", "switchyard")]
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports == {"api": 8080, "admin": 9090}, f"container ports {ports}")
check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz")
check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness on /healthz")
check(c["readinessProbe"]["httpGet"]["port"] == "admin" and c["livenessProbe"]["httpGet"]["port"] == "admin", "probes on the admin listener")
check({"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"]), "resource requests and limits")
sc = c["securityContext"]
check(sc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
check(sc.get("runAsNonRoot") is True and pod["securityContext"].get("runAsNonRoot") is True, "non-root")
check(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
cm = objs[("ConfigMap", "switchyard-config")]
proxy_toml = cm["data"]["proxy.toml"]
switchyard_check(proxy_toml, "the ConfigMap's proxy.toml")
check(any(m["mountPath"] == "/etc/switchyard" for m in c["volumeMounts"]), "the ConfigMap mounted at /etc/switchyard")
check("/etc/switchyard/proxy.toml" in c["args"], "serve reads the mounted proxy.toml")
drain = re.search(r'^\s*drain_timeout\s*=\s*"([^"]+)"', proxy_toml, re.M)
delay = re.search(r'^\s*drain_delay\s*=\s*"([^"]+)"', proxy_toml, re.M)
needed = duration_seconds(drain.group(1) if drain else "30s") + duration_seconds(delay.group(1) if delay else "5s")
grace = pod["terminationGracePeriodSeconds"]
check(needed < grace <= needed + 30, f"terminationGracePeriodSeconds {grace} matches drain_delay + drain_timeout ({needed}s)")
secret_env = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
check({"SWITCHYARD_STATE_URL", "SWITCHYARD_ADMIN_TOKEN"} <= secret_env, f"secrets from the Secret: {secret_env}")
check(all("value" not in e for e in c["env"] if any(w in e["name"] for w in SECRET_WORDS)), "no literal secret in the Deployment")
secret = objs[("Secret", "switchyard-secrets")]
check(all(v == "" for v in secret.get("stringData", {}).values()), "the Secret template holds no value")
check("secret.yaml" not in kust["resources"], "the Secret template is not applied as is")
svc_ports = {}
for (kind, name), o in objs.items():
    if kind == "Service":
        for p in o["spec"]["ports"]:
            svc_ports[p["targetPort"]] = name
check(set(svc_ports) == {"api", "admin"}, f"a Service per listener: {svc_ports}")
check(objs[("Service", "switchyard-admin")]["spec"].get("clusterIP") == "None", "the admin Service is headless (Prometheus DNS discovery)")
check(("PodDisruptionBudget", "switchyard") in objs, "a PodDisruptionBudget")
hpa = objs.get(("HorizontalPodAutoscaler", "switchyard"))
check(hpa is not None and hpa["spec"]["minReplicas"] >= 2, "a HorizontalPodAutoscaler keeping two replicas")
prom_k8s = docs[DEPLOY / "prometheus/prometheus.kubernetes.yml"][0]
names = [n for sc in prom_k8s["scrape_configs"] for d in sc.get("dns_sd_configs", []) for n in d["names"]]
check(any(n.startswith("switchyard-admin.switchyard.") for n in names), "Prometheus on Kubernetes finds the pods through the admin Service")

# --- checkov -------------------------------------------------------------------------------
for target, framework in (("deploy/kubernetes", "kubernetes"), ("deploy/Dockerfile", "dockerfile")):
    flag = "-d" if framework == "kubernetes" else "-f"
    r = run(str(VENV_BIN / "checkov"), flag, target, "--framework", framework, "--quiet", "--compact",
            "--skip-download", "--output", "json")
    try:
        report = json.loads(r.stdout)
    except json.JSONDecodeError:
        check(False, f"checkov {target}: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        continue
    reports = report if isinstance(report, list) else [report]
    failed = [f"{c['check_id']} {c['resource']}" for rep in reports for c in rep.get("results", {}).get("failed_checks", [])]
    passed = sum(rep.get("summary", {}).get("passed", 0) for rep in reports)
    check(not failed, f"checkov {target}: failed {failed}")
    check(passed > 10, f"checkov {target}: ran ({passed} passed)")
    print(f"checkov {target}: {passed} passed, {len(failed)} failed")

if failures:
    print(f"\n{len(failures)} deploy check(s) failed")
    sys.exit(1)
print("deploy/: all checks passed")
