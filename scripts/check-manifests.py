#!/usr/bin/env python3
"""What schema validation cannot see in rendered Kubernetes manifests: whether each pod and the
p13n-edge config it mounts (from the rendered ConfigMap) agree. Run by scripts/check-deploy.

    check-manifests.py RENDERED.yaml...

For every StatefulSet or Deployment with a p13n-edge container, it checks:
- the hardening: runAsNonRoot, seccomp RuntimeDefault, and in every container no privilege
  escalation, a read-only root filesystem, all capabilities dropped;
- a sidecar (an init container) has restartPolicy Always;
- the config file is in a ConfigMap volume; the key and token files in a Secret volume;
- the spool dir, pid file and upgrade socket are on writable volumes (a StatefulSet's spool on
  a volumeClaimTemplate: one persistent volume per pod), never on the read-only root;
- the probes reach the admin listener's port (and it listens on the pod's address): startup
  and liveness on /healthz, readiness, where there is one, on /readyz; so do the Prometheus
  annotations;
- terminationGracePeriodSeconds is longer than the preStop pause plus grace_period_seconds
  plus graceful_shutdown_timeout_seconds, so that SIGKILL never cuts an accepted event off;
- with [shared], its password_file is on a Secret volume, and a server named by a bare host
  name is a Service of the same manifests.
Other workloads (the shared tier's Valkey) get the hardening checks only.
"""
import posixpath
import sys
import tomllib

import yaml

problems = []


def check(ok, where, message):
    if not ok:
        problems.append(f"{where}: {message}")


def mount_for(path, mounts):
    """The volume mount that holds `path`: the longest mount path above it."""
    found = None
    for m in mounts:
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (
            found is None or len(mp) > len(found["mountPath"].rstrip("/"))
        ):
            found = m
    return found


def port_number(port, container):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def check_workload(w, configmaps, services, where):
    """The checks above for one workload; returns how many p13n-edge containers it has."""
    pod = w["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, where, "pod securityContext.runAsNonRoot is not true")
    check(
        psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        where,
        "pod seccompProfile is not RuntimeDefault",
    )
    inits = pod.get("initContainers", [])
    containers = inits + pod.get("containers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        at = f"{where} container {c['name']}"
        check(sc.get("allowPrivilegeEscalation") is False, at, "allowPrivilegeEscalation is not false")
        check(sc.get("readOnlyRootFilesystem") is True, at, "readOnlyRootFilesystem is not true")
        check("ALL" in sc.get("capabilities", {}).get("drop", []), at, "capabilities do not drop ALL")
    edges = [c for c in containers if "p13n-edge" in c.get("image", "")]
    if not edges:
        return 0  # another workload (the shared tier's Valkey): the hardening above only
    if len(edges) != 1:
        check(False, where, f"{len(edges)} p13n-edge containers, expected 1")
        return 1
    edge = edges[0]
    at = f"{where} container {edge['name']}"
    if edge in inits:
        check(edge.get("restartPolicy") == "Always", at, "a sidecar needs restartPolicy: Always")
    args = edge.get("args", [])
    check("--config" in args, at, "no --config in args")
    if "--config" not in args:
        return
    config_path = args[args.index("--config") + 1]
    mounts = edge.get("volumeMounts", [])
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}

    def volume_of(path):
        m = mount_for(path, mounts)
        return (m, volumes.get(m["name"]) if m else None)

    m, v = volume_of(config_path)
    if not (v and "configMap" in v):
        check(False, at, f"{config_path} is not on a ConfigMap volume")
        return
    cm = configmaps.get(v["configMap"]["name"])
    key = posixpath.relpath(config_path, m["mountPath"])
    if cm is None or key not in cm.get("data", {}):
        check(False, at, f"{config_path}: no key {key} in ConfigMap {v['configMap']['name']}")
        return
    config = tomllib.loads(cm["data"][key])
    server = config.get("server", {})

    def writable(path, what, persistent=False):
        m, v = volume_of(path)
        if m is None:
            check(False, at, f"{what} {path} is on the read-only root filesystem")
        elif m.get("readOnly"):
            check(False, at, f"{what} {path} is on a read-only mount")
        elif persistent:
            check(m["name"] in claims, at, f"{what} {path} is not on a volumeClaimTemplate")
        else:
            check(m["name"] in claims or (v and "emptyDir" in v), at, f"{what} {path} is not on a writable volume")

    spool = config.get("spool", {}).get("dir", "/var/lib/p13n-edge/spool")
    writable(spool, "spool.dir", persistent=w["kind"] == "StatefulSet")
    writable(posixpath.dirname(server.get("pid_file", "/tmp/p13n-edge.pid")), "server.pid_file's directory")
    writable(posixpath.dirname(server.get("upgrade_sock", "/tmp/p13n-edge-upgrade.sock")), "server.upgrade_sock's directory")
    for service in config.get("service", []):
        for field in ("api_key_file", "tokens_file"):
            if field in service:
                _, v = volume_of(service[field])
                check(bool(v and "secret" in v), at, f"{field} {service[field]} is not on a Secret volume")
    shared = config.get("shared")
    if shared is not None:
        if "password_file" in shared:
            _, v = volume_of(shared["password_file"])
            check(bool(v and "secret" in v), at, f"shared.password_file {shared['password_file']} is not on a Secret volume")
        # A server named by a bare host name must be a Service of the same manifests.
        host = shared.get("url", "").split("://", 1)[-1].split("/", 1)[0].rpartition(":")[0]
        if host and "." not in host:
            check(host in services, at, f"shared.url names {host}, which is no Service here")

    host, _, port = config.get("admin", {}).get("listen", "127.0.0.1:9090").rpartition(":")
    admin_port = int(port)
    probes = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for name, path in probes.items():
        probe = edge.get(name)
        if probe is None:
            check(name == "readinessProbe", at, f"no {name}")
            continue
        get = probe.get("httpGet")
        check(get is not None, at, f"{name} is not an httpGet")
        if get:
            check(get.get("path") == path, at, f"{name} asks {get.get('path')}, not {path}")
            check(port_number(get.get("port"), edge) == admin_port, at, f"{name} is not on admin port {admin_port}")
            check(host in ("0.0.0.0", "[::]"), at, f"httpGet probes cannot reach admin.listen {host}")
    annotations = w["spec"]["template"]["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/port") == str(admin_port), at, "prometheus.io/port is not the admin port")

    stop = edge.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = server.get("grace_period_seconds", 5) + server.get("graceful_shutdown_timeout_seconds", 5)
    period = pod.get("terminationGracePeriodSeconds", 30)
    check(
        period > stop + grace,
        at,
        f"terminationGracePeriodSeconds {period} is not longer than preStop {stop} s plus the config's {grace} s",
    )
    return 1


def main(paths):
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
        workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
        edges = 0
        for w in workloads:
            edges += check_workload(w, configmaps, services, f"{path}: {w['kind']}/{w['metadata']['name']}")
        check(edges > 0, path, "no StatefulSet or Deployment with a p13n-edge container")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{', '.join(posixpath.basename(p) for p in paths)}: pods and config agree")


if __name__ == "__main__":
    main(sys.argv[1:])
