#!/usr/bin/env python3
"""Policy checks on the rendered Kubernetes manifests of deploy/overlays/*.

    deploy_check.py --deploy-dir deploy --overlay dev=dev.yaml --overlay prod=prod.yaml
    deploy_check.py --self-test --overlay dev=dev.yaml --overlay prod=prod.yaml

For every rendered overlay it asserts that
  - every container of every workload has resource requests (cpu, memory)
    and a memory limit, and the restricted securityContext: runAsNonRoot,
    readOnlyRootFilesystem, allowPrivilegeEscalation false, all capabilities
    dropped, seccomp RuntimeDefault, not privileged, no host namespaces;
  - every Deployment/StatefulSet container has liveness, readiness and
    startup probes; the microshop containers' readiness asks grpc.health.v1
    on their gRPC port, while liveness and startup do not depend on it (it
    follows MongoDB); they pause before SIGTERM and get the grace to drain;
  - every ConfigMap, Secret, ServiceAccount, Service port, HPA target and
    PDB selector refers to something that exists (Secrets created out of
    band are the documented ones only); no credential is written in a
    manifest, and no Secret reaches a container as an environment variable:
    Secrets are mounted as files, named by `<SETTING>_FILE` variables that
    point into a mounted Secret volume (the microshop containers read their
    MongoDB connection string from MONGODB_URI_FILE);
  - the NetworkPolicies put every pod under default-deny, and allow exactly
    the mesh's edges (clients -> orchestrator, orchestrator -> participants,
    services -> MongoDB, MongoDB <-> MongoDB, init Job -> MongoDB,
    monitoring -> metrics, everyone -> DNS): every pair of pods and every
    declared port is evaluated, so both a missing edge and an extra one fail
    (without an in-cluster MongoDB: egress to an ipBlock on 27017);
  - prod: >= 2 replicas (3 orchestrators), an autoscaling/v2 CPU HPA, a
    PodDisruptionBudget and topology spread for every workload, a replica
    set of >= 3 members, authentication on.
It also refuses deprecated kustomize fields in deploy/**/kustomization.yaml.

--self-test breaks the rendered manifests in known ways and asserts that
each break is reported, so the checks above cannot silently pass.

    deploy_check.py --pinned prod=prod-pinned.yaml
asserts that every container image of a render is pinned by digest (the
prod overlays rendered with the `digest:` a release sets).

    deploy_check.py --checkov report.json --overlay dev=dev.yaml ...
reads checkov's JSON report (`-o json`) on the renders and prints per
overlay how many checks passed, failed and were skipped, and each skip with
its reason; it fails on any failed check, any parsing error, and any skip
without a reason.

Exit status 0 when everything holds; 1 with one line per problem, each
naming the overlay and the object.
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import re
import sys

import yaml

SERVICES = {"orchestrator": 50051, "inventory": 50052, "loyalty": 50053, "order": 50054}
PARTICIPANTS = ("inventory", "loyalty", "order")
METRICS_PORT = 9464
MONGO_PORT = 27017
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
LONG_RUNNING_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
# Secrets an operator creates by hand (docs/deployment.md, "Create the
# Secrets (prod)"); the
# manifests only refer to them.
EXTERNAL_SECRETS = {"microshop-mongodb", "microshop-auth", "mongodb-auth"}
PROD_MIN_REPLICAS = {"orchestrator": 3}
DEPRECATED_KUSTOMIZE_FIELDS = (
    "bases",
    "patchesStrategicMerge",
    "patchesJson6902",
    "commonLabels",
    "vars",
    "imageTags",
)
CREDENTIAL_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE|CREDENTIAL|MONGODB_URI|_KEY$)", re.I)


# --------------------------------------------------------------------------
# small helpers


def kn(doc):
    return "%s/%s" % (doc.get("kind", "?"), (doc.get("metadata") or {}).get("name", "?"))


def quantity(value):
    """A Kubernetes quantity as a float (bytes or cores)."""
    if value is None:
        return None
    text = str(value)
    suffixes = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
        "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3,
    }
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def selector_matches(selector, labels):
    """A LabelSelector against a label map; {} matches everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class Pod:
    """A pod template of a workload, or a stand-in pod outside the namespace."""

    def __init__(self, name, namespace, labels, ports, owner=None, spec=None):
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.ports = ports  # [(name, port, protocol)]
        self.owner = owner  # the workload document, None for stand-ins
        self.spec = spec or {}

    def __repr__(self):
        where = "" if self.owner is not None else " (%s)" % self.namespace
        return self.name + where


def pod_template(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return doc.get("metadata") or {}, spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    template = spec.get("template") or {}
    return template.get("metadata") or {}, template.get("spec") or {}


def containers(pod_spec, init=True):
    result = list(pod_spec.get("containers") or [])
    if init:
        result += list(pod_spec.get("initContainers") or [])
    return result


def is_microshop(container):
    return container.get("name") == "microshop" or "microshop" in str(container.get("image", "")).split("/")[-1]


def env_of(container):
    return {e.get("name"): e for e in container.get("env") or []}


class Render:
    def __init__(self, name, docs):
        self.name = name
        self.docs = [d for d in docs if isinstance(d, dict)]
        self.profile = "prod" if name.startswith("prod") else "dev"
        namespaces = [d["metadata"]["name"] for d in self.docs if d.get("kind") == "Namespace"]
        self.namespace = (namespaces or [self._first_namespace() or "default"])[0]
        ns_docs = [d for d in self.docs if d.get("kind") == "Namespace" and d["metadata"]["name"] == self.namespace]
        self.ns_labels = dict((ns_docs[0]["metadata"].get("labels") or {}) if ns_docs else {})
        self.ns_labels["kubernetes.io/metadata.name"] = self.namespace

    def _first_namespace(self):
        for d in self.docs:
            ns = (d.get("metadata") or {}).get("namespace")
            if ns:
                return ns
        return None

    def of_kind(self, *kinds):
        return [d for d in self.docs if d.get("kind") in kinds]

    def find(self, kind, name):
        for d in self.docs:
            if d.get("kind") == kind and d["metadata"].get("name") == name:
                return d
        return None

    def workloads(self):
        return self.of_kind(*WORKLOAD_KINDS)

    def pods(self):
        result = []
        for w in self.workloads():
            meta, spec = pod_template(w)
            labels = meta.get("labels") or {}
            ports = []
            for c in containers(spec, init=False):
                for p in c.get("ports") or []:
                    ports.append((p.get("name"), p["containerPort"], p.get("protocol", "TCP")))
            name = labels.get("app.kubernetes.io/name") or w["metadata"]["name"]
            result.append(Pod(name, self.namespace, labels, ports, owner=w, spec=spec))
        return result

    def config_data(self):
        """Every key of every ConfigMap the microshop containers load."""
        data = {}
        for cm in self.of_kind("ConfigMap"):
            data[cm["metadata"]["name"]] = cm.get("data") or {}
        return data


# --------------------------------------------------------------------------
# checks: each appends "Kind/name: message" strings to `problems`


def check_workloads(r, problems):
    for w in r.workloads():
        meta, spec = pod_template(w)
        where = kn(w)
        psc = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append("%s: %s is on" % (where, flag))
        if spec.get("automountServiceAccountToken") is not False:
            problems.append("%s: automountServiceAccountToken must be false (nothing here calls the API)" % where)
        for c in containers(spec):
            cw = "%s container %s" % (where, c.get("name"))
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for key in ("cpu", "memory"):
                if key not in req:
                    problems.append("%s: no resources.requests.%s" % (cw, key))
            if "memory" not in lim:
                problems.append("%s: no resources.limits.memory" % cw)
            elif "memory" in req and quantity(lim["memory"]) < quantity(req["memory"]):
                problems.append("%s: memory limit %s below its request %s" % (cw, lim["memory"], req["memory"]))
            sc = c.get("securityContext") or {}
            if sc.get("runAsNonRoot") is False or not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                problems.append("%s: securityContext.runAsNonRoot is not true" % cw)
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                problems.append("%s: runs as uid 0" % cw)
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append("%s: securityContext.readOnlyRootFilesystem is not true" % cw)
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append("%s: securityContext.allowPrivilegeEscalation is not false" % cw)
            if sc.get("privileged"):
                problems.append("%s: privileged" % cw)
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append("%s: securityContext.capabilities.drop does not include ALL" % cw)
            if caps.get("add"):
                problems.append("%s: adds capabilities %s" % (cw, caps["add"]))
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                problems.append("%s: seccompProfile is %s, not RuntimeDefault" % (cw, seccomp))
            for name, e in env_of(c).items():
                if "value" in e and CREDENTIAL_NAME.search(name or "") and not name.endswith("_FILE"):
                    problems.append("%s: %s is written in the manifest; take it from a Secret" % (cw, name))
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    problems.append(
                        "%s: %s comes from Secret %s as an environment variable; mount the Secret "
                        "as a file and set %s_FILE (checkov CKV_K8S_35)" % (cw, name, ref.get("name"), name)
                    )
                if name.endswith("_FILE") and e.get("value") and not mounted_from(spec, c, e["value"]):
                    problems.append("%s: %s=%s is not on a mounted volume" % (cw, name, e["value"]))
            for ref in c.get("envFrom") or []:
                if "secretRef" in ref:
                    problems.append(
                        "%s: envFrom Secret %s puts secrets in environment variables; mount it as files"
                        % (cw, ref["secretRef"].get("name"))
                    )
        if w["kind"] in LONG_RUNNING_KINDS:
            for c in containers(spec, init=False):
                cw = "%s container %s" % (where, c.get("name"))
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    if not c.get(probe):
                        problems.append("%s: no %s" % (cw, probe))
        for c in containers(spec, init=False):
            if is_microshop(c):
                check_microshop_container(r, w, spec, c, problems)


def mounted_from(spec, c, path):
    """The volume of the pod `spec` mounted in container `c` that holds
    `path`, or None."""
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    holding = [
        m for m in c.get("volumeMounts") or [] if path.startswith(m.get("mountPath", "").rstrip("/") + "/")
    ]
    if not holding:
        return None
    # Nested mounts: the deepest one holds the file.
    m = max(holding, key=lambda m: len(m.get("mountPath", "")))
    return volumes.get(m.get("name"), {"name": m.get("name")})


def check_microshop_container(r, w, spec, c, problems):
    cw = "%s container %s" % (kn(w), c.get("name"))
    args = c.get("args") or []
    if len(args) != 2 or args[0] != "serve" or args[1] not in SERVICES:
        problems.append("%s: args %s are not `serve <service>`" % (cw, args))
        return
    service = args[1]
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if ports.get("grpc") != SERVICES[service]:
        problems.append("%s: port `grpc` is %s, not %s" % (cw, ports.get("grpc"), SERVICES[service]))
    if ports.get("metrics") != METRICS_PORT:
        problems.append("%s: port `metrics` is %s, not %s" % (cw, ports.get("metrics"), METRICS_PORT))
    # Native gRPC probes against grpc.health.v1 on the service's port. The
    # overall entry "" follows the storage (NOT_SERVING while MongoDB does
    # not answer): readiness must ask it; liveness and startup must ask the
    # `liveness` entry instead, or a database outage restarts every pod.
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        p = c.get(probe) or {}
        grpc = p.get("grpc")
        if grpc is None:
            problems.append("%s: %s is not a native grpc probe (grpc.health.v1)" % (cw, probe))
            continue
        if grpc.get("port") != SERVICES[service]:
            problems.append("%s: %s probes port %s, not %s" % (cw, probe, grpc.get("port"), SERVICES[service]))
        if probe == "readinessProbe" and grpc.get("service"):
            problems.append("%s: readinessProbe must ask the overall health, not %r" % (cw, grpc.get("service")))
        if probe != "readinessProbe" and grpc.get("service") != "liveness":
            problems.append(
                "%s: %s asks the overall grpc health, which follows MongoDB: "
                "a database outage would restart the pod (ask service `liveness`)" % (cw, probe)
            )
    pre = ((c.get("lifecycle") or {}).get("preStop")) or {}
    pause = (pre.get("sleep") or {}).get("seconds")
    if pause is None and not pre.get("exec"):
        problems.append("%s: no preStop pause before SIGTERM" % cw)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if pause is not None and grace < pause + 30:
        problems.append(
            "%s: terminationGracePeriodSeconds %s leaves less than 30 s to drain after the %s s preStop"
            % (cw, grace, pause)
        )
    env = env_of(c)
    config = {}
    for ref in c.get("envFrom") or []:
        name = (ref.get("configMapRef") or {}).get("name")
        config.update(r.config_data().get(name, {}))
    settings = dict(config)
    for name, e in env.items():
        if "value" in e:
            settings[name] = e["value"]
    # The connection string carries the database password: a file from
    # the Secret microshop-mongodb (key uri), never an environment variable.
    if "MONGODB_URI" in env or "MONGODB_URI" in settings:
        problems.append("%s: MONGODB_URI is set; mount the Secret and set MONGODB_URI_FILE instead" % cw)
    uri_file = settings.get("MONGODB_URI_FILE")
    volume = mounted_from(spec, c, uri_file) if uri_file else None
    if not uri_file:
        problems.append("%s: MONGODB_URI_FILE is not set (the MongoDB connection string)" % cw)
    elif not (volume or {}).get("secret"):
        problems.append("%s: MONGODB_URI_FILE %s is not on a mounted Secret volume" % (cw, uri_file))
    else:
        secret = volume["secret"]
        key = uri_file[len(next(
            m["mountPath"].rstrip("/") + "/" for m in c.get("volumeMounts") or [] if m.get("name") == volume["name"]
        )):]
        items = {i.get("path"): i.get("key") for i in secret.get("items") or []}
        # (a Secret from a kustomize generator carries a hash suffix)
        name = re.sub(r"-[a-z0-9]{10}$", "", secret.get("secretName") or "")
        if name != "microshop-mongodb" or items.get(key, key if not items else None) != "uri":
            problems.append(
                "%s: MONGODB_URI_FILE %s is not key `uri` of the Secret microshop-mongodb" % (cw, uri_file)
            )
    if settings.get("MICROSHOP_DATA_DIR") != "/data":
        problems.append("%s: MICROSHOP_DATA_DIR is %s, not /data" % (cw, settings.get("MICROSHOP_DATA_DIR")))
    if "/data" not in [m.get("mountPath") for m in c.get("volumeMounts") or []]:
        problems.append("%s: nothing writable mounted at /data (the root filesystem is read-only)" % cw)
    if settings.get("MICROSHOP_LOG_FORMAT") != "json":
        problems.append("%s: MICROSHOP_LOG_FORMAT is not json" % cw)
    if not str(settings.get("MICROSHOP_METRICS_ADDR", "")).endswith(":%d" % METRICS_PORT):
        problems.append("%s: MICROSHOP_METRICS_ADDR does not serve :%d" % (cw, METRICS_PORT))
    insecure = str(settings.get("MICROSHOP_INSECURE_NO_AUTH", "")).lower() in ("1", "true", "yes", "on")
    key_file = settings.get("MICROSHOP_AUTH_HS256_SECRET_FILE") or settings.get("MICROSHOP_AUTH_RS256_PUBLIC_KEY_FILE")
    if not insecure and not key_file:
        problems.append("%s: neither authentication nor MICROSHOP_INSECURE_NO_AUTH: `serve` would refuse to start" % cw)
    if insecure and key_file:
        problems.append("%s: a token key and MICROSHOP_INSECURE_NO_AUTH: `serve` would refuse to start" % cw)
    if not key_file and (settings.get("MICROSHOP_AUTH_ISSUER") or settings.get("MICROSHOP_AUTH_AUDIENCE")):
        problems.append("%s: MICROSHOP_AUTH_ISSUER or _AUDIENCE without a key: `serve` would refuse to start" % cw)
    if r.profile == "prod":
        if insecure:
            problems.append("%s: MICROSHOP_INSECURE_NO_AUTH in production" % cw)
        for name in ("MICROSHOP_AUTH_ISSUER", "MICROSHOP_AUTH_AUDIENCE"):
            if not settings.get(name):
                problems.append("%s: %s is not set" % (cw, name))
    if key_file:
        mounts = [m.get("mountPath", "").rstrip("/") + "/" for m in c.get("volumeMounts") or []]
        if not any(key_file.startswith(m) for m in mounts):
            problems.append("%s: %s is not on a mounted volume" % (cw, key_file))
    if service == "orchestrator":
        oid = env.get("MICROSHOP_ORCHESTRATOR_ID") or {}
        if ((oid.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") != "metadata.name":
            problems.append("%s: MICROSHOP_ORCHESTRATOR_ID is not the pod name (downward API)" % cw)
        for name in ("MICROSHOP_INVENTORY_URL", "MICROSHOP_LOYALTY_URL", "MICROSHOP_ORDER_URL"):
            if not settings.get(name):
                problems.append("%s: %s is not set" % (cw, name))
        if key_file and not settings.get("MICROSHOP_AUTH_SERVICE_TOKEN_FILE"):
            problems.append("%s: authentication is on but MICROSHOP_AUTH_SERVICE_TOKEN_FILE is not set" % cw)


def check_references(r, problems):
    config_maps = {d["metadata"]["name"] for d in r.of_kind("ConfigMap")}
    secrets = {d["metadata"]["name"] for d in r.of_kind("Secret")}
    accounts = {d["metadata"]["name"] for d in r.of_kind("ServiceAccount")} | {"default"}

    def secret(where, name):
        if name not in secrets and name not in EXTERNAL_SECRETS:
            problems.append("%s: refers to Secret %s, which is neither rendered nor documented" % (where, name))

    def config_map(where, name):
        if name not in config_maps:
            problems.append("%s: refers to ConfigMap %s, which is not rendered" % (where, name))

    for w in r.workloads():
        _, spec = pod_template(w)
        where = kn(w)
        if spec.get("serviceAccountName", "default") not in accounts:
            problems.append("%s: ServiceAccount %s is not rendered" % (where, spec.get("serviceAccountName")))
        for v in spec.get("volumes") or []:
            if "configMap" in v:
                config_map(where, v["configMap"]["name"])
            if "secret" in v:
                secret(where, v["secret"]["secretName"])
        for c in containers(spec):
            for ref in c.get("envFrom") or []:
                if "configMapRef" in ref:
                    config_map(where, ref["configMapRef"]["name"])
                if "secretRef" in ref:
                    secret(where, ref["secretRef"]["name"])
            for e in c.get("env") or []:
                vf = e.get("valueFrom") or {}
                if "configMapKeyRef" in vf:
                    config_map(where, vf["configMapKeyRef"]["name"])
                if "secretKeyRef" in vf:
                    secret(where, vf["secretKeyRef"]["name"])
            mounts = {m["name"] for m in c.get("volumeMounts") or []}
            declared = {v["name"] for v in spec.get("volumes") or []}
            declared |= {t["metadata"]["name"] for t in (w.get("spec") or {}).get("volumeClaimTemplates") or []}
            for missing in mounts - declared:
                problems.append("%s container %s: mounts volume %s, which is not declared" % (where, c.get("name"), missing))
    pods = r.pods()
    for svc in r.of_kind("Service"):
        selector = (svc.get("spec") or {}).get("selector") or {}
        matched = [p for p in pods if selector and selector_matches({"matchLabels": selector}, p.labels)]
        if not matched:
            problems.append("%s: its selector %s matches no pod" % (kn(svc), selector))
            continue
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for p in matched:
                if not any(target in (n, num) for n, num, _ in p.ports):
                    problems.append("%s: targetPort %s is not a port of %s" % (kn(svc), target, p.name))
    for hpa in r.of_kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if not r.find(ref["kind"], ref["name"]):
            problems.append("%s: scales %s/%s, which is not rendered" % (kn(hpa), ref["kind"], ref["name"]))
    for pdb in r.of_kind("PodDisruptionBudget"):
        if not any(selector_matches(pdb["spec"].get("selector"), p.labels) for p in pods):
            problems.append("%s: its selector matches no pod" % kn(pdb))
    for s in r.of_kind("Secret"):
        for key, value in list((s.get("stringData") or {}).items()) + list((s.get("data") or {}).items()):
            text = str(value)
            if key in (s.get("data") or {}):
                try:
                    text = base64.b64decode(text).decode("utf-8", "replace")
                except Exception:  # noqa: BLE001 - not base64: check it as is
                    pass
            if r.profile == "prod":
                problems.append("%s: a Secret rendered from the repository in production; create it out of band" % kn(s))
                break
            if re.search(r"://[^/@\s]+:[^/@\s]+@", text):
                problems.append("%s: key %s carries a password in the repository" % (kn(s), key))
    for cm in r.of_kind("ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)) or (
                CREDENTIAL_NAME.search(key) and not key.endswith("_FILE") and not key.endswith(".js")
            ):
                problems.append("%s: key %s looks like a credential in a ConfigMap" % (kn(cm), key))


def check_mongo(r, problems):
    sts = [d for d in r.of_kind("StatefulSet") if d["metadata"]["name"] == "mongo"]
    if not sts:
        return
    sts = sts[0]
    replicas = sts["spec"].get("replicas", 1)
    if not sts["spec"].get("volumeClaimTemplates"):
        problems.append("%s: no volumeClaimTemplates (members would lose their data)" % kn(sts))
    headless = r.find("Service", sts["spec"].get("serviceName"))
    if not headless or headless["spec"].get("clusterIP") != "None":
        problems.append("%s: serviceName %s is not a headless Service" % (kn(sts), sts["spec"].get("serviceName")))
    args = containers(pod_template(sts)[1], init=False)[0].get("args") or []
    for flag in ("--replSet", "--bind_ip_all"):
        if flag not in args:
            problems.append("%s: mongod runs without %s" % (kn(sts), flag))
    job = r.find("Job", "mongo-init")
    if not job:
        problems.append("%s: no mongo-init Job initiates the replica set" % kn(sts))
    else:
        env = env_of(containers(pod_template(job)[1], init=False)[0])
        expected = str((env.get("MONGO_REPLICAS") or {}).get("value"))
        if expected != str(replicas):
            problems.append(
                "%s: MONGO_REPLICAS is %s but %s has %s replicas" % (kn(job), expected, kn(sts), replicas)
            )
    if r.profile == "prod":
        if replicas < 3 or replicas % 2 == 0:
            problems.append("%s: %s members; production needs an odd number >= 3" % (kn(sts), replicas))
        if "--keyFile" not in args:
            problems.append("%s: members do not authenticate each other (--keyFile)" % kn(sts))


def check_prod(r, problems):
    if r.profile != "prod":
        return
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in r.of_kind("HorizontalPodAutoscaler")}
    pdbs = r.of_kind("PodDisruptionBudget")
    for w in r.of_kind("Deployment", "StatefulSet"):
        where = kn(w)
        name = w["metadata"]["name"]
        _, spec = pod_template(w)
        minimum = PROD_MIN_REPLICAS.get(name, 2)
        if w["spec"].get("replicas", 1) < minimum:
            problems.append("%s: %s replica(s), production needs >= %d" % (where, w["spec"].get("replicas", 1), minimum))
        if not spec.get("topologySpreadConstraints"):
            problems.append("%s: no topologySpreadConstraints" % where)
        labels = pod_template(w)[0].get("labels") or {}
        if not any(selector_matches(p["spec"].get("selector"), labels) for p in pdbs):
            problems.append("%s: no PodDisruptionBudget covers its pods" % where)
        if w["kind"] == "Deployment":
            hpa = hpas.get(name)
            if hpa is None:
                problems.append("%s: no HorizontalPodAutoscaler" % where)
                continue
            if hpa.get("apiVersion") != "autoscaling/v2":
                problems.append("%s: apiVersion %s, not autoscaling/v2" % (kn(hpa), hpa.get("apiVersion")))
            if (hpa["spec"].get("minReplicas") or 1) < minimum:
                problems.append("%s: minReplicas %s < %d" % (kn(hpa), hpa["spec"].get("minReplicas"), minimum))
            if not any(
                m.get("type") == "Resource" and (m.get("resource") or {}).get("name") == "cpu"
                for m in hpa["spec"].get("metrics") or []
            ):
                problems.append("%s: does not scale on CPU" % kn(hpa))


# --------------------------------------------------------------------------
# NetworkPolicy evaluation


def policies(r):
    result = []
    for np in r.of_kind("NetworkPolicy"):
        spec = np.get("spec") or {}
        types = spec.get("policyTypes")
        if not types:
            types = ["Ingress"] + (["Egress"] if "egress" in spec else [])
        result.append((np, spec, types))
    return result


def ns_labels_of(r, pod, externals):
    if pod.namespace == r.namespace:
        return r.ns_labels
    return externals[pod.namespace]


def peer_matches(r, policy_ns, peer, pod, externals):
    if "ipBlock" in peer:
        return False
    ns_sel = peer.get("namespaceSelector")
    pod_sel = peer.get("podSelector")
    if ns_sel is not None:
        if not selector_matches(ns_sel, ns_labels_of(r, pod, externals)):
            return False
    elif pod.namespace != policy_ns:
        return False
    return pod_sel is None or selector_matches(pod_sel, pod.labels)


def port_matches(rule_ports, target, port, protocol):
    if not rule_ports:
        return True
    for rp in rule_ports:
        if rp.get("protocol", "TCP") != protocol:
            continue
        want = rp.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            if any(n == want and num == port and proto == protocol for n, num, proto in target.ports):
                return True
            continue
        if want <= port <= rp.get("endPort", want):
            return True
    return False


def allowed(r, src, dst, port, protocol, externals):
    """Whether src may open dst:port under the rendered policies."""

    def direction(subject, other, kind, field, peers_field):
        selecting = [
            (np, spec)
            for np, spec, types in policies(r)
            if kind in types and subject.namespace == r.namespace and selector_matches(spec.get("podSelector"), subject.labels)
        ]
        if not selecting:
            return True
        for _, spec in selecting:
            for rule in spec.get(field) or []:
                peers = rule.get(peers_field)
                if peers and not any(peer_matches(r, r.namespace, peer, other, externals) for peer in peers):
                    continue
                if port_matches(rule.get("ports"), dst, port, protocol):
                    return True
        return False

    return direction(src, dst, "Egress", "egress", "to") and direction(dst, src, "Ingress", "ingress", "from")


def external_mongo_egress(r, pod):
    for _, spec, types in policies(r):
        if "Egress" not in types or not selector_matches(spec.get("podSelector"), pod.labels):
            continue
        for rule in spec.get("egress") or []:
            if any("ipBlock" in peer for peer in rule.get("to") or []) and (
                not rule.get("ports")
                or any(p.get("port") == MONGO_PORT and p.get("protocol", "TCP") == "TCP" for p in rule["ports"])
            ):
                return True
    return False


def check_network(r, problems):
    pods = r.pods()
    externals = {
        "shop": {"kubernetes.io/metadata.name": "shop"},
        "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
        "monitoring": {"kubernetes.io/metadata.name": "monitoring"},
    }
    client = Pod("client", "shop", {"microshop.io/client": "true"}, [("http", 8080, "TCP")])
    stranger = Pod("stranger", "shop", {}, [("http", 8080, "TCP")])
    dns = Pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")])
    prometheus = Pod("prometheus", "monitoring", {"app": "prometheus"}, [("web", 9090, "TCP")])
    everyone = pods + [client, stranger, dns, prometheus]

    deny_all = [
        np
        for np, spec, types in policies(r)
        if spec.get("podSelector") == {} and "Ingress" in types and "Egress" in types
        and not spec.get("ingress") and not spec.get("egress")
    ]
    for pod in pods:
        if not deny_all:
            problems.append("%s: no default-deny NetworkPolicy (empty podSelector, Ingress and Egress) selects its pods" % kn(pod.owner))

    names = {p.name for p in pods}
    expected = set()
    if "orchestrator" in names:
        expected.add(("client", "orchestrator", SERVICES["orchestrator"]))
        for participant in PARTICIPANTS:
            if participant in names:
                expected.add(("orchestrator", participant, SERVICES[participant]))
    for service in SERVICES:
        if service in names:
            expected.add(("prometheus", service, METRICS_PORT))
    if "mongo" in names:
        for source in list(SERVICES) + ["mongo", "mongo-init"]:
            if source in names:
                expected.add((source, "mongo", MONGO_PORT))
    for pod in pods:
        expected.add((pod.name, "kube-dns", 53))
    if "mongo" not in names:
        # a MongoDB outside the cluster: egress to its addresses on 27017
        for pod in pods:
            if pod.name in SERVICES and not external_mongo_egress(r, pod):
                problems.append(
                    "%s: no MongoDB in the overlay and no NetworkPolicy lets it reach one "
                    "(egress to an ipBlock on %d)" % (kn(pod.owner), MONGO_PORT)
                )

    seen = set()
    for src in everyone:
        for dst in everyone:
            if src.owner is None and dst.owner is None:
                continue  # between stand-ins: not ours to police
            for _, port, protocol in dst.ports:
                ok = allowed(r, src, dst, port, protocol, externals)
                edge = (src.name, dst.name, port)
                if ok:
                    seen.add(edge)
                    if edge not in expected:
                        culprit = src.owner if src.owner is not None else dst.owner
                        problems.append(
                            "%s: NetworkPolicies allow an unexpected edge %r -> %r:%d/%s"
                            % (kn(culprit), src, dst, port, protocol)
                        )
    for src, dst, port in sorted(expected - seen):
        owner = next((p.owner for p in pods if p.name in (dst, src)), None)
        problems.append(
            "%s: NetworkPolicies block the required edge %s -> %s:%d"
            % (kn(owner) if owner else "NetworkPolicy", src, dst, port)
        )
    return len(expected)


def check_kustomizations(deploy_dir, problems):
    count = 0
    for root, _, files in os.walk(deploy_dir):
        for f in files:
            if f not in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
                continue
            path = os.path.join(root, f)
            count += 1
            with open(path) as handle:
                doc = yaml.safe_load(handle) or {}
            for field in DEPRECATED_KUSTOMIZE_FIELDS:
                if field in doc:
                    problems.append("%s: deprecated kustomize field `%s`" % (path, field))
    if count == 0:
        problems.append("%s: no kustomization.yaml found" % deploy_dir)


def check_render(r):
    problems = []
    if not r.workloads():
        problems.append("overlay renders no workload")
    check_workloads(r, problems)
    check_references(r, problems)
    check_mongo(r, problems)
    check_prod(r, problems)
    edges = check_network(r, problems)
    return problems, edges


# --------------------------------------------------------------------------
# self-test: every break must be reported


def _doc(docs, kind, name):
    for d in docs:
        if d.get("kind") == kind and d["metadata"].get("name") == name:
            return d
    raise KeyError("%s/%s" % (kind, name))


def _container(docs, kind, name, index=0):
    return pod_template(_doc(docs, kind, name))[1]["containers"][index]


def _remove(docs, kind, name):
    docs.remove(_doc(docs, kind, name))


def _env(docs, kind, name, var):
    return [e for e in _container(docs, kind, name)["env"] if e["name"] == var][0]


def _volume(docs, kind, name, volume):
    return [v for v in pod_template(_doc(docs, kind, name))[1]["volumes"] if v["name"] == volume][0]


def _config(docs):
    return next(d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"].startswith("microshop-config"))


MUTATIONS = [
    # (overlay, description, mutate(docs), substrings the report must contain)
    ("prod", "no liveness probe", lambda d: _container(d, "Deployment", "orchestrator").pop("livenessProbe"),
     ["Deployment/orchestrator", "livenessProbe"]),
    ("dev", "no startup probe on MongoDB", lambda d: _container(d, "StatefulSet", "mongo").pop("startupProbe"),
     ["StatefulSet/mongo", "startupProbe"]),
    ("prod", "tcp instead of grpc probe",
     lambda d: _container(d, "Deployment", "inventory").update(readinessProbe={"tcpSocket": {"port": 50052}}),
     ["Deployment/inventory", "readinessProbe is not a native grpc probe"]),
    ("prod", "tcp liveness instead of grpc",
     lambda d: _container(d, "Deployment", "loyalty").update(livenessProbe={"tcpSocket": {"port": 50053}}),
     ["Deployment/loyalty", "livenessProbe is not a native grpc probe"]),
    ("prod", "liveness on the storage-aware health",
     lambda d: _container(d, "Deployment", "order").update(livenessProbe={"grpc": {"port": 50054}}),
     ["Deployment/order", "livenessProbe asks the overall grpc health"]),
    ("prod", "writable root filesystem",
     lambda d: _container(d, "StatefulSet", "mongo")["securityContext"].update(readOnlyRootFilesystem=False),
     ["StatefulSet/mongo", "readOnlyRootFilesystem"]),
    ("dev", "privilege escalation",
     lambda d: _container(d, "Job", "mongo-init")["securityContext"].pop("allowPrivilegeEscalation"),
     ["Job/mongo-init", "allowPrivilegeEscalation"]),
    ("prod", "capabilities kept",
     lambda d: _container(d, "Deployment", "order")["securityContext"].pop("capabilities"),
     ["Deployment/order", "capabilities.drop"]),
    ("prod", "no seccomp",
     lambda d: (_container(d, "Deployment", "loyalty")["securityContext"].pop("seccompProfile"),
                pod_template(_doc(d, "Deployment", "loyalty"))[1]["securityContext"].pop("seccompProfile")),
     ["Deployment/loyalty", "seccompProfile"]),
    ("prod", "runs as root",
     lambda d: (_container(d, "Deployment", "order")["securityContext"].pop("runAsNonRoot"),
                pod_template(_doc(d, "Deployment", "order"))[1]["securityContext"].pop("runAsNonRoot")),
     ["Deployment/order", "runAsNonRoot"]),
    ("prod", "no memory limit",
     lambda d: _container(d, "Deployment", "loyalty")["resources"].pop("limits"),
     ["Deployment/loyalty", "limits.memory"]),
    ("dev", "no requests on an init container",
     lambda d: pod_template(_doc(d, "Job", "mongo-init"))[1]["containers"][0]["resources"].pop("requests"),
     ["Job/mongo-init", "requests.cpu"]),
    ("prod", "no default deny", lambda d: _remove(d, "NetworkPolicy", "default-deny-all"),
     ["default-deny"]),
    ("prod", "participant open to everyone",
     lambda d: _doc(d, "NetworkPolicy", "inventory")["spec"]["ingress"][0].pop("from"),
     ["Deployment/inventory", "unexpected edge stranger (shop) -> inventory:50052"]),
    ("dev", "egress open to the world",
     lambda d: _doc(d, "NetworkPolicy", "allow-dns-egress")["spec"]["egress"].__setitem__(0, {}),
     ["unexpected edge inventory -> client (shop):8080"]),
    ("prod", "services cannot reach MongoDB", lambda d: _remove(d, "NetworkPolicy", "mongo-clients"),
     ["required edge orchestrator -> mongo:27017"]),
    ("prod", "members cannot replicate",
     lambda d: _doc(d, "NetworkPolicy", "mongo")["spec"].pop("egress"),
     ["required edge mongo -> mongo:27017"]),
    ("dev", "no DNS", lambda d: _remove(d, "NetworkPolicy", "allow-dns-egress"),
     ["required edge orchestrator -> kube-dns:53"]),
    ("prod-external-mongodb", "no egress to the managed MongoDB",
     lambda d: _remove(d, "NetworkPolicy", "mongo-clients"),
     ["Deployment/order", "no NetworkPolicy lets it reach one"]),
    ("prod", "authentication off in production",
     lambda d: _config(d)["data"].update(MICROSHOP_INSECURE_NO_AUTH="1"),
     ["MICROSHOP_INSECURE_NO_AUTH in production"]),
    ("dev", "neither auth nor insecure", lambda d: _config(d)["data"].pop("MICROSHOP_INSECURE_NO_AUTH"),
     ["would refuse to start"]),
    ("dev", "an issuer without a key", lambda d: _config(d)["data"].update(MICROSHOP_AUTH_ISSUER="https://x"),
     ["without a key"]),
    ("prod", "a key and insecure", lambda d: _config(d)["data"].update(MICROSHOP_INSECURE_NO_AUTH="1"),
     ["a token key and MICROSHOP_INSECURE_NO_AUTH"]),
    ("prod", "one orchestrator", lambda d: _doc(d, "Deployment", "orchestrator")["spec"].update(replicas=1),
     ["Deployment/orchestrator", "replica"]),
    ("prod", "no HPA", lambda d: _remove(d, "HorizontalPodAutoscaler", "loyalty"),
     ["Deployment/loyalty", "HorizontalPodAutoscaler"]),
    ("prod", "no PDB for MongoDB", lambda d: _remove(d, "PodDisruptionBudget", "mongo"),
     ["StatefulSet/mongo", "PodDisruptionBudget"]),
    ("prod", "no topology spread",
     lambda d: pod_template(_doc(d, "Deployment", "order"))[1].pop("topologySpreadConstraints"),
     ["Deployment/order", "topologySpreadConstraints"]),
    ("prod", "two MongoDB members", lambda d: _doc(d, "StatefulSet", "mongo")["spec"].update(replicas=2),
     ["StatefulSet/mongo", "odd number"]),
    ("dev", "init Job expects another member count",
     lambda d: _env(d, "Job", "mongo-init", "MONGO_REPLICAS").update(value="3"),
     ["Job/mongo-init", "MONGO_REPLICAS"]),
    ("prod", "connection string written in the manifest",
     lambda d: _container(d, "Deployment", "order")["env"].append(
         {"name": "MONGODB_URI", "value": "mongodb://u:p@mongo:27017"}),
     ["Deployment/order", "MONGODB_URI"]),
    ("dev", "password in a generated Secret",
     lambda d: next(x for x in d if x.get("kind") == "Secret")["data"].update(
         uri=base64.b64encode(b"mongodb://microshop:hunter2@mongo:27017/?replicaSet=rs0").decode()),
     ["carries a password in the repository"]),
    ("prod", "undocumented Secret",
     lambda d: _volume(d, "Deployment", "order", "mongodb")["secret"].update(secretName="typo"),
     ["Secret typo"]),
    ("prod", "a Secret as an environment variable",
     lambda d: _container(d, "StatefulSet", "mongo")["env"].append(
         {"name": "MONGO_INITDB_ROOT_PASSWORD",
          "valueFrom": {"secretKeyRef": {"name": "mongodb-auth", "key": "root-password"}}}),
     ["StatefulSet/mongo", "MONGO_INITDB_ROOT_PASSWORD comes from Secret mongodb-auth as an environment variable"]),
    ("dev", "connection string file outside its Secret",
     lambda d: _env(d, "Deployment", "inventory", "MONGODB_URI_FILE").update(value="/data/uri"),
     ["Deployment/inventory", "MONGODB_URI_FILE /data/uri is not on a mounted Secret volume"]),
    ("prod", "orchestrator id not from the pod name",
     lambda d: _env(d, "Deployment", "orchestrator", "MICROSHOP_ORCHESTRATOR_ID").update(
         valueFrom=None, value="orchestrator"),
     ["Deployment/orchestrator", "MICROSHOP_ORCHESTRATOR_ID"]),
    ("prod", "no preStop pause", lambda d: _container(d, "Deployment", "order").pop("lifecycle"),
     ["Deployment/order", "preStop"]),
    ("prod", "Service port not on the pod",
     lambda d: _doc(d, "Service", "loyalty")["spec"]["ports"][0].update(targetPort="grcp"),
     ["Service/loyalty", "targetPort grcp"]),
]


def self_test(renders):
    failures = []
    by_name = {r.name: r for r in renders}
    for r in renders:
        problems, _ = check_render(r)
        if problems:
            failures.append("self-test: overlay %s does not pass unchanged: %s" % (r.name, problems[0]))
    caught = 0
    for overlay, description, mutate, expected in MUTATIONS:
        base = by_name.get(overlay)
        if base is None:
            continue
        docs = copy.deepcopy(base.docs)
        mutate(docs)
        problems, _ = check_render(Render(base.name, docs))
        hit = [p for p in problems if all(s in p for s in expected)]
        if hit:
            caught += 1
            print("  caught %-45s %s" % (description + ":", hit[0]))
        else:
            failures.append(
                "self-test: break %r in %s was not reported as %r (reported: %s)"
                % (description, overlay, expected, problems[:3] or "nothing")
            )
    for line in failures:
        print("FAIL " + line)
    print("self-test: %d of %d breaks caught" % (caught, len([m for m in MUTATIONS if m[0] in by_name])))
    return not failures


# --------------------------------------------------------------------------
# images pinned by digest, and checkov's report


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def check_pinned(r):
    """Every container image of the render carries a sha256 digest."""
    problems = []
    for w in r.workloads():
        for c in containers(pod_template(w)[1]):
            if not DIGEST.search(str(c.get("image", ""))):
                problems.append("%s container %s: image %s is not pinned by digest" % (kn(w), c.get("name"), c.get("image")))
    if not r.workloads():
        problems.append("renders no workload")
    return problems


def checkov_summary(report, renders):
    """Per overlay: checkov's passed, failed and skipped checks; a list of
    problems (failures, parsing errors, skips without a reason)."""
    # One framework gives an object, several a list of them.
    reports = report if isinstance(report, list) else [report]
    by_file = {os.path.basename(path): name for name, path in renders}
    counts = {name: {"passed": 0, "failed": 0, "skipped": 0} for name, _ in renders}
    problems, skips = [], []
    for rep in reports:
        if rep.get("check_type") not in (None, "kubernetes"):
            continue
        summary = rep.get("summary") or {}
        if summary.get("parsing_errors"):
            problems.append("checkov could not parse %s file(s)" % summary["parsing_errors"])
        results = rep.get("results") or {}
        for kind, key in (("passed_checks", "passed"), ("failed_checks", "failed"), ("skipped_checks", "skipped")):
            for res in results.get(kind) or []:
                name = by_file.get(os.path.basename(res.get("file_path", "")), res.get("file_path"))
                counts.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0})[key] += 1
                where = "%s: %s %s" % (name, res.get("check_id"), res.get("resource"))
                if key == "failed":
                    problems.append("%s: %s (neither fixed nor skipped with a reason)" % (where, res.get("check_name")))
                if key == "skipped":
                    reason = ((res.get("check_result") or {}).get("suppress_comment") or "").strip()
                    if not reason or reason == "No comment provided":
                        problems.append("%s: skipped without a reason (annotate `checkov.io/skip-...: CHECK=reason`)" % where)
                    skips.append((name, res.get("check_id"), res.get("resource"), reason))
    if not any(c["passed"] for c in counts.values()):
        problems.append("checkov reported no passed check: did it scan the renders?")
    return counts, skips, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overlay", action="append", default=[], metavar="NAME=FILE",
                        help="a rendered overlay (prod* overlays get the production rules)")
    parser.add_argument("--deploy-dir", help="lint the kustomization files under this directory")
    parser.add_argument("--self-test", action="store_true", help="break the renders and expect each break reported")
    parser.add_argument("--pinned", action="append", default=[], metavar="NAME=FILE",
                        help="a render whose every image must be pinned by digest")
    parser.add_argument("--checkov", metavar="REPORT.json",
                        help="summarize checkov's JSON report on the --overlay renders; fail on findings")
    args = parser.parse_args()

    if args.pinned:
        ok = True
        for spec in args.pinned:
            name, _, path = spec.partition("=")
            with open(path) as handle:
                problems = check_pinned(Render(name, list(yaml.safe_load_all(handle))))
            for p in problems:
                print("FAIL %s: %s" % (name, p))
            if not problems:
                print("ok   %s: every image is pinned by digest" % name)
            ok = ok and not problems
        return 0 if ok else 1

    if args.checkov:
        import json

        with open(args.checkov) as handle:
            report = json.load(handle)
        renders = [tuple(spec.partition("=")[::2]) for spec in args.overlay]
        counts, skips, problems = checkov_summary(report, renders)
        for name, c in sorted(counts.items()):
            print("checkov %-22s passed %4d  failed %3d  skipped %3d" % (name + ":", c["passed"], c["failed"], c["skipped"]))
        grouped = {}
        for name, check, resource, reason in skips:
            grouped.setdefault((check, reason), []).append((name, resource))
        for (check, reason), where in sorted(grouped.items()):
            overlays = sorted({name for name, _ in where})
            print("  skip %s on %d resource(s) in %s: %s" % (check, len(where), ", ".join(overlays), reason))
        for p in problems:
            print("FAIL checkov %s" % p)
        return 1 if problems else 0

    renders = []
    for spec in args.overlay:
        name, _, path = spec.partition("=")
        with open(path) as handle:
            renders.append(Render(name, list(yaml.safe_load_all(handle))))
    if args.self_test:
        return 0 if self_test(renders) else 1

    ok = True
    if args.deploy_dir:
        problems = []
        check_kustomizations(args.deploy_dir, problems)
        for p in problems:
            print("FAIL kustomize: %s" % p)
        ok = ok and not problems
    for r in renders:
        problems, edges = check_render(r)
        for p in problems:
            print("FAIL %s: %s" % (r.name, p))
        if not problems:
            print(
                "ok   %s: %d objects, %d workloads: probes, resources, securityContext, references; "
                "NetworkPolicies allow exactly the %d expected edges"
                % (r.name, len(r.docs), len(r.workloads()), edges)
            )
        ok = ok and not problems
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
