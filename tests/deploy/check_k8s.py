#!/usr/bin/python3
"""Checks docker/k8s/*.yaml without a cluster.

No cluster and no kubectl/kubeconform schema are available offline here. Two
checks instead:
  1. Schema: every object is walked against the models of Debian's
     python3-kubernetes (22.6, generated from the Kubernetes 1.22 OpenAPI
     schema): unknown fields (typos), field types, and required fields (by
     deserializing into the models). autoscaling/v2 is checked against the
     v2beta2 models, whose fields v2 kept unchanged. Skipped, and said so,
     when the module is missing.
  2. The fields these manifests use, per kind (apiVersion, required fields,
     types, enums, cross-references), plus the rules of this deployment:
  - Deployment: selector matches the template labels; readinessProbe GET /ready,
    livenessProbe GET /health on a declared container port; resource requests
    and limits (requests <= limits); terminationGracePeriodSeconds > preStop
    sleep + drain_timeout of the ConfigMap's config; preStop present;
    runAsNonRoot with the image's uid; the ConfigMap is mounted at the image's
    MOA_CONFIG directory;
  - Service: selector matches the Deployment's pods, targetPort names a
    container port;
  - HorizontalPodAutoscaler (autoscaling/v2): targets the Deployment,
    minReplicas <= maxReplicas, a metric of a known type;
  - ConfigMap: has moa-server.conf; with --server BIN, that file is parsed by
    the real server (`moa-server --config FILE --print-config`);
  - kustomization.yaml lists every manifest.
Exit 1 with one line per problem.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import yaml

PROBLEMS = []


def problem(where, msg):
    PROBLEMS.append("%s: %s" % (where, msg))


def get(doc, path, where, typ=None, required=True):
    """doc['a']['b'][0]... by 'a.b.0'; checks presence and type."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            if required:
                problem(where, "missing %s" % path)
            return None
    if typ is not None and not isinstance(cur, typ) or (typ is int and isinstance(cur, bool)):
        problem(where, "%s should be %s, is %r" % (path, typ.__name__ if isinstance(typ, type) else typ, cur))
        return None
    return cur


def check_name(where, name):
    # RFC 1123 DNS label/subdomain, as Kubernetes requires for these kinds
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name) or len(name) > 253:
        problem(where, "metadata.name %r is not a valid DNS subdomain" % (name,))


QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(where, v):
    m = QUANTITY.match(str(v)) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None
    if not m:
        problem(where, "%r is not a resource quantity" % (v,))
        return None
    return float(m.group(1)) * FACTORS[m.group(3)]


def check_probe(where, probe, path, ports):
    if not isinstance(probe, dict):
        problem(where, "missing")
        return
    hg = get(probe, "httpGet", where, dict)
    if hg:
        if hg.get("path") != path:
            problem(where, "httpGet.path is %r, expected %r" % (hg.get("path"), path))
        port = hg.get("port")
        if isinstance(port, str) and port not in ports or isinstance(port, int) and port not in ports.values():
            problem(where, "httpGet.port %r is not a container port" % (port,))
    for k in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold", "successThreshold"):
        if k in probe and (not isinstance(probe[k], int) or isinstance(probe[k], bool) or probe[k] < 0):
            problem(where, "%s should be a non-negative integer" % k)
    if "successThreshold" in probe and path == "/health" and probe["successThreshold"] != 1:
        problem(where, "livenessProbe.successThreshold must be 1")


def check_configmap(doc, where, args, ctx):
    data = get(doc, "data", where, dict)
    if not data:
        return
    for k, v in data.items():
        if not isinstance(v, str):
            problem(where, "data.%s must be a string" % k)
    conf = data.get("moa-server.conf")
    if conf is None:
        problem(where, "no data.moa-server.conf")
        return
    m = re.search(r"^\s*drain_timeout\s*=\s*([0-9.]+)", conf, re.M)
    ctx["drain_timeout"] = float(m.group(1)) if m else 30.0
    ctx["configmap"] = doc["metadata"]["name"]
    if args.server:
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
            f.write(conf)
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MOA_")}
            r = subprocess.run([args.server, "--config", f.name, "--print-config"], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                problem(where, "moa-server --print-config refused moa-server.conf: %s" % (r.stderr.strip() or r.stdout.strip()))
            else:
                ctx["server_checked"] = True
        finally:
            os.unlink(f.name)


def check_deployment(doc, where, ctx):
    get(doc, "spec.replicas", where, int, required=False)
    sel = get(doc, "spec.selector.matchLabels", where, dict)
    labels = get(doc, "spec.template.metadata.labels", where, dict)
    if sel and labels and any(labels.get(k) != v for k, v in sel.items()):
        problem(where, "spec.selector.matchLabels %r does not match the template labels %r" % (sel, labels))
    ctx["pod_labels"] = labels or {}
    ctx["deployment"] = doc["metadata"]["name"]
    pod = get(doc, "spec.template.spec", where, dict) or {}
    grace = get(pod, "terminationGracePeriodSeconds", where + " pod", int)
    sc = pod.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True:
        problem(where, "pod securityContext.runAsNonRoot should be true")
    if sc.get("runAsUser") not in (None, 10001):
        problem(where, "runAsUser %r is not the image's user 10001" % sc.get("runAsUser"))
    containers = get(pod, "containers", where + " pod", list) or []
    if not containers:
        problem(where, "no containers")
    volumes = {v.get("name"): v for v in pod.get("volumes", []) if isinstance(v, dict)}
    for i, c in enumerate(containers):
        cw = "%s container %s" % (where, c.get("name", i))
        get(c, "name", cw, str)
        get(c, "image", cw, str)
        ports = {}
        for p in c.get("ports", []):
            cp = get(p, "containerPort", cw + " port", int)
            if cp is not None and not 0 < cp < 65536:
                problem(cw, "containerPort %d out of range" % cp)
            if p.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
                problem(cw, "bad protocol %r" % p.get("protocol"))
            if "name" in p:
                if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", p["name"]) or len(p["name"]) > 15:
                    problem(cw, "port name %r is not an IANA_SVC_NAME" % p["name"])
                ports[p["name"]] = cp
        if 8080 not in ports.values():
            problem(cw, "no containerPort 8080 (the image's EXPOSE)")
        ctx["container_ports"] = ports
        for e in c.get("env", []):
            if not isinstance(e.get("name"), str) or ("value" in e and not isinstance(e["value"], str)):
                problem(cw, "env entries need a name and a string value: %r" % (e,))
        check_probe(cw + " readinessProbe", c.get("readinessProbe"), "/ready", ports)
        check_probe(cw + " livenessProbe", c.get("livenessProbe"), "/health", ports)
        if "startupProbe" in c:
            check_probe(cw + " startupProbe", c["startupProbe"], "/ready", ports)
        res = get(c, "resources", cw, dict) or {}
        req, lim = res.get("requests", {}), res.get("limits", {})
        for r in ("cpu", "memory"):
            if r not in req:
                problem(cw, "resources.requests.%s missing" % r)
            if r not in lim:
                problem(cw, "resources.limits.%s missing" % r)
            if r in req and r in lim:
                a, b = quantity(cw, req[r]), quantity(cw, lim[r])
                if a is not None and b is not None and a > b:
                    problem(cw, "requests.%s %s > limits.%s %s" % (r, req[r], r, lim[r]))
        ctx["cpu_request"] = quantity(cw, req["cpu"]) if "cpu" in req else None
        pre = get(c, "lifecycle.preStop", cw, dict)
        sleep_s = 0.0
        if pre:
            cmd = (pre.get("exec") or {}).get("command")
            if "sleep" in pre:
                sleep_s = float(pre["sleep"].get("seconds", 0))
            elif isinstance(cmd, list) and all(isinstance(x, str) for x in cmd) and cmd:
                if os.path.basename(cmd[0]) == "sleep" and len(cmd) == 2 and re.fullmatch(r"[0-9.]+", cmd[1]):
                    sleep_s = float(cmd[1])
                else:
                    problem(cw, "preStop exec should be a sleep: %r" % (cmd,))
            else:
                problem(cw, "preStop needs exec.command (a list of strings) or sleep")
        ctx["prestop"] = sleep_s
        ctx["grace"] = grace
        mounted = False
        for vm in c.get("volumeMounts", []):
            v = volumes.get(vm.get("name"))
            if v is None:
                problem(cw, "volumeMount %r names no volume" % vm.get("name"))
            elif "configMap" in v and vm.get("mountPath") == "/opt/moa-serve/conf":
                mounted = v["configMap"].get("name")
        if not mounted:
            problem(cw, "the ConfigMap is not mounted at /opt/moa-serve/conf (the image's MOA_CONFIG directory)")
        ctx["mounted_configmap"] = mounted


def check_service(doc, where, ctx):
    ctx["service_selector"] = get(doc, "spec.selector", where, dict) or {}
    ports = get(doc, "spec.ports", where, list) or []
    ctx["service_target_ports"] = []
    for p in ports:
        port = get(p, "port", where + " port", int)
        if port is not None and not 0 < port < 65536:
            problem(where, "port %d out of range" % port)
        ctx["service_target_ports"].append(p.get("targetPort", port))
    t = doc["spec"].get("type", "ClusterIP")
    if t not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        problem(where, "spec.type %r" % t)


def check_hpa(doc, where, ctx):
    if doc.get("apiVersion") != "autoscaling/v2":
        problem(where, "apiVersion should be autoscaling/v2")
    ref = get(doc, "spec.scaleTargetRef", where, dict) or {}
    ctx["hpa_target"] = (ref.get("apiVersion"), ref.get("kind"), ref.get("name"))
    mx = get(doc, "spec.maxReplicas", where, int)
    mn = get(doc, "spec.minReplicas", where, int, required=False)
    if mx is not None and mn is not None and not 1 <= mn <= mx:
        problem(where, "need 1 <= minReplicas <= maxReplicas")
    for i, m in enumerate(get(doc, "spec.metrics", where, list, required=False) or []):
        t = m.get("type")
        if t not in ("Resource", "Pods", "Object", "External", "ContainerResource"):
            problem(where, "metrics[%d].type %r" % (i, t))
        if t == "Resource":
            tgt = get(m, "resource.target", where, dict) or {}
            get(m, "resource.name", where, str)
            if tgt.get("type") not in ("Utilization", "AverageValue", "Value"):
                problem(where, "metrics[%d].resource.target.type %r" % (i, tgt.get("type")))
            if tgt.get("type") == "Utilization" and not isinstance(tgt.get("averageUtilization"), int):
                problem(where, "metrics[%d]: averageUtilization must be an integer" % i)
    for d in ("scaleUp", "scaleDown"):
        b = (doc["spec"].get("behavior") or {}).get(d)
        if b:
            for p in b.get("policies", []):
                if p.get("type") not in ("Pods", "Percent") or not isinstance(p.get("value"), int) or not isinstance(p.get("periodSeconds"), int):
                    problem(where, "behavior.%s policy %r" % (d, p))


SCHEMA_MODELS = {"ConfigMap": "V1ConfigMap", "Deployment": "V1Deployment", "Service": "V1Service",
                 "HorizontalPodAutoscaler": "V2beta2HorizontalPodAutoscaler"}


def schema_walk(k8s, obj, typ, path, where):
    """Unknown fields and types against the python3-kubernetes models."""
    if typ.startswith("list["):
        if not isinstance(obj, list):
            return problem(where, "%s should be a list" % path)
        for i, x in enumerate(obj):
            schema_walk(k8s, x, typ[5:-1], "%s[%d]" % (path, i), where)
    elif typ.startswith("dict("):
        if not isinstance(obj, dict):
            return problem(where, "%s should be a mapping" % path)
        inner = typ[5:-1].split(", ", 1)[1]
        for key, x in obj.items():
            schema_walk(k8s, x, inner, "%s.%s" % (path, key), where)
    elif typ == "str" or typ in ("datetime", "date"):
        if not isinstance(obj, str):
            problem(where, "%s should be a string, is %r" % (path, obj))
    elif typ == "int":
        if not isinstance(obj, int) or isinstance(obj, bool):
            problem(where, "%s should be an integer, is %r" % (path, obj))
    elif typ == "float":
        if not isinstance(obj, (int, float)) or isinstance(obj, bool):
            problem(where, "%s should be a number, is %r" % (path, obj))
    elif typ == "bool":
        if not isinstance(obj, bool):
            problem(where, "%s should be true or false, is %r" % (path, obj))
    elif typ == "object":
        pass  # IntOrString, quantities, free-form
    else:
        cls = getattr(k8s, typ, None)
        if cls is None:
            return problem(where, "%s: no model %s" % (path, typ))
        if not isinstance(obj, dict):
            return problem(where, "%s should be a mapping (%s)" % (path, typ))
        by_json = {j: py for py, j in cls.attribute_map.items()}
        for key, x in obj.items():
            if key not in by_json:
                problem(where, "%s.%s: unknown field (not in %s)" % (path, key, typ))
            else:
                schema_walk(k8s, x, cls.openapi_types[by_json[key]], "%s.%s" % (path, key), where)


def schema_check(doc, kind, where):
    try:
        import kubernetes.client as k8s
    except ImportError:
        return False
    model = SCHEMA_MODELS[kind]
    before = len(PROBLEMS)
    schema_walk(k8s, doc, model, kind, where)
    if len(PROBLEMS) == before:
        try:  # required fields: the models refuse None where the schema requires a value
            k8s.ApiClient()._ApiClient__deserialize(doc, model)
        except (ValueError, TypeError) as e:
            problem(where, "schema (%s): %s" % (model, e))
    return True


KINDS = {"ConfigMap": ("v1", check_configmap), "Deployment": ("apps/v1", check_deployment),
         "Service": ("v1", check_service), "HorizontalPodAutoscaler": ("autoscaling/v2", check_hpa)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default="docker/k8s")
    ap.add_argument("--server", help="moa-server binary: check the ConfigMap's config with it")
    args = ap.parse_args()
    ctx, seen, files = {}, {}, sorted(f for f in os.listdir(args.dir) if f.endswith((".yaml", ".yml")))
    for fn in files:
        path = os.path.join(args.dir, fn)
        try:
            docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
        except yaml.YAMLError as e:
            problem(fn, "YAML: %s" % e)
            continue
        for d in docs:
            if not isinstance(d, dict):
                problem(fn, "a document is not a mapping")
                continue
            kind = d.get("kind")
            if kind == "Kustomization":
                listed = set(d.get("resources", []))
                for other in files:
                    if other != fn and other not in listed:
                        problem(fn, "does not list %s" % other)
                for r in listed:
                    if not os.path.exists(os.path.join(args.dir, r)):
                        problem(fn, "lists %s, which does not exist" % r)
                continue
            where = "%s (%s)" % (fn, kind)
            if kind not in KINDS:
                problem(fn, "unexpected kind %r" % kind)
                continue
            if d.get("apiVersion") != KINDS[kind][0]:
                problem(where, "apiVersion %r, expected %r" % (d.get("apiVersion"), KINDS[kind][0]))
            if not isinstance(d.get("metadata"), dict) or "name" not in d["metadata"]:
                problem(where, "metadata.name missing")
                continue
            check_name(where, d["metadata"]["name"])
            ctx["schema"] = schema_check(d, kind, where) and ctx.get("schema", True)
            KINDS[kind][1](d, where, args, ctx) if kind == "ConfigMap" else KINDS[kind][1](d, where, ctx)
            seen[kind] = d["metadata"]["name"]
    for kind in KINDS:
        if kind not in seen:
            problem(args.dir, "no %s" % kind)
    # cross-references
    if "grace" in ctx and ctx["grace"] is not None:
        need = ctx.get("prestop", 0) + ctx.get("drain_timeout", 30)
        if ctx["grace"] <= need:
            problem("deployment", "terminationGracePeriodSeconds %d <= preStop %g s + drain_timeout %g s"
                    % (ctx["grace"], ctx.get("prestop", 0), ctx.get("drain_timeout", 30)))
    if ctx.get("prestop", 0) <= 0:
        problem("deployment", "preStop sleep should be > 0 s (endpoints are removed while it sleeps)")
    if ctx.get("mounted_configmap") and ctx.get("configmap") and ctx["mounted_configmap"] != ctx["configmap"]:
        problem("deployment", "mounts ConfigMap %r, the ConfigMap is %r" % (ctx["mounted_configmap"], ctx["configmap"]))
    sel, labels = ctx.get("service_selector", {}), ctx.get("pod_labels", {})
    if sel and any(labels.get(k) != v for k, v in sel.items()):
        problem("service", "selector %r does not select the pods %r" % (sel, labels))
    for tp in ctx.get("service_target_ports", []):
        ports = ctx.get("container_ports", {})
        if isinstance(tp, str) and tp not in ports or isinstance(tp, int) and tp not in ports.values():
            problem("service", "targetPort %r is not a container port" % (tp,))
    if "hpa_target" in ctx and ctx["hpa_target"] != ("apps/v1", "Deployment", ctx.get("deployment")):
        problem("hpa", "scaleTargetRef %r is not the Deployment" % (ctx["hpa_target"],))

    for p in PROBLEMS:
        print("FAIL k8s:", p)
    if not PROBLEMS:
        print("k8s manifests OK: %s; schema %s; grace %ss > preStop %gs + drain_timeout %gs; config %s"
              % (", ".join("%s %s" % (k, v) for k, v in seen.items()),
                 "checked (python3-kubernetes models)" if ctx.get("schema") else "NOT checked (no python3-kubernetes)",
                 ctx.get("grace"), ctx.get("prestop", 0),
                 ctx.get("drain_timeout", 30),
                 "parsed by moa-server --print-config" if ctx.get("server_checked") else "not run through moa-server"))
    sys.exit(1 if PROBLEMS else 0)


if __name__ == "__main__":
    main()
