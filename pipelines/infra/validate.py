"""Offline validation of the deployment material in `infra/`: JSON schemas, policies and consistency checks.

Three kinds of checks, each problem naming the file, the document and the JSON path:

- **schema**: every Kubernetes manifest against the Kubernetes OpenAPI schemas bundled by the PyPI package
  `kubernetes-validate` (strict variant: unknown fields are errors), the KubeRay and Spark Operator CRD schemas and
  the Compose spec vendored under `infra/schemas/` (SOURCES.json: repository, tag, commit, licence). CRD schemas
  leave unknown fields to the API server's pruning, which silently drops a misspelled field; they are made strict
  here the same way (`additionalProperties: false` wherever a schema lists its properties and does not keep
  unknown fields).
- **policy**: images pinned to a version (no `latest`, no bare major), CPU and memory requests and limits on every
  container, nothing privileged (no `privileged`, no privilege escalation, no host network/PID), secrets only from
  Secrets (Kubernetes: `secretKeyRef`) or from `.env` (Compose: `${VAR}` interpolation), no Secret object in the
  repository, published Compose ports on loopback only, a health check on every long-running Compose service.
- **consistency**: the project image is the same `name:<pyproject version>` everywhere; `rayVersion` and
  `sparkVersion` match requirements.lock; every `llmops run <stage>` names a stage of dvc.yaml; the RayService
  autoscaling matches `serve.ray`; the Ray worker group fits `finetune.num_workers`; Prometheus scrapes
  `serve.port`; the Grafana dashboard queries only metrics the serving app exports; every key of
  `infra/params.cluster.yaml` exists in params.yaml.

No network, no Airflow import, no cluster: this is what CI runs (`llmops infra-validate`).
"""
from __future__ import annotations

import gzip
import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import yaml

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: params.yaml parses 20x faster
KUBERNETES_VERSION = "1.33"  # the oldest Kubernetes the manifests must run on (kubernetes-validate bundles 1.25-1.37)
INFRA = "infra"
SCHEMAS = "infra/schemas"
CRD_SCHEMAS = {  # apiVersion/kind -> vendored schema (infra/schemas/SOURCES.json)
    ("ray.io/v1", "RayCluster"): "kuberay/raycluster-ray-v1.json.gz",
    ("ray.io/v1", "RayJob"): "kuberay/rayjob-ray-v1.json.gz",
    ("ray.io/v1", "RayService"): "kuberay/rayservice-ray-v1.json.gz",
    ("sparkoperator.k8s.io/v1beta2", "SparkApplication"): "spark-operator/sparkapplication-sparkoperator-v1beta2.json.gz",
}
COMPOSE_SCHEMA = "compose/compose-spec.json.gz"
AIRFLOW_CHART_SCHEMA = "airflow-chart/values.schema.json"  # vendor it to check the Helm values (see infra/README.md)
PROJECT_IMAGE = "ghcr.io/llmops-platform/llmops-pipelines"

SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|FERNET|PRIVATE_KEY|API_KEYS?|ACCESS_KEY(?!_ID)|_CONN$|"
                         r"BACKEND_STORE_URI)", re.I)
FLOATING_TAGS = {"latest", "stable", "main", "master", "nightly", "edge", "dev"}
VERSIONED_TAG = re.compile(r"\d+\.\d+|\d{4}-\d{2}-\d{2}")  # major.minor (16.10-alpine, v3.5.0) or a release date


@dataclass(frozen=True)
class Problem:
    file: str
    where: str  # "Kind/name" of a manifest, "service x" of Compose, "" for the whole file
    check: str  # schema | policy | consistency | parse
    path: str  # JSON path inside the document
    message: str
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        where = f" {self.where}" if self.where else ""
        return f"{self.file}:{where} [{self.check}] {self.path}: {self.message}"


@dataclass
class Report:
    files: list[dict] = field(default_factory=list)  # {file, kind, documents}
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


# ---------------------------------------------------------------------------------------------------------- schemas

def _load_gz(path: Path) -> dict:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def strict(schema: Any) -> Any:
    """A copy of a CRD/OpenAPI schema in which objects listing their properties reject unknown ones."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _crd_validator(root: str, api_version: str, kind: str):
    path = Path(root) / SCHEMAS / CRD_SCHEMAS[(api_version, kind)]
    st = path.stat()
    return _crd_validator_of(path.name, st.st_size, st.st_mtime_ns, str(path))


@lru_cache(maxsize=None)
def _crd_validator_of(name: str, size: int, mtime_ns: int, path: str):
    import jsonschema

    schema = strict(_load_gz(Path(path)))
    # metadata is an opaque object in CRD schemas; it is checked with Kubernetes' own ObjectMeta instead
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


@lru_cache(maxsize=None)
def _k8s_validator(api_version: str, kind: str, version: str = KUBERNETES_VERSION):
    """Kubernetes' own schema for a built-in kind, from kubernetes-validate's bundled (strict) files."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    versions = [v for v in utils.all_versions() if utils.major_minor(v) <= version]
    directory = f"kubernetes-json-schema/v{versions[-1]}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"{directory}/{kind.lower()}-{group}.json", version)
    except FileNotFoundError:
        return None
    definitions = utils.schema_contents(f"{directory}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@lru_cache(maxsize=None)
def _object_meta_validator():
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    v = [x for x in utils.all_versions() if utils.major_minor(x) <= KUBERNETES_VERSION][-1]
    definitions = utils.schema_contents(f"kubernetes-json-schema/v{v}-local-strict/_definitions.json", v)
    schema = {"$ref": "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _json_path(error) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def _schema_errors(validator, doc: Any, prefix: str = "$") -> Iterator[tuple[str, str]]:
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        # For anyOf/oneOf the most relevant sub-error says more than "is not valid under any of the given schemas"
        best = error
        if error.context:
            import jsonschema

            best = jsonschema.exceptions.best_match(error.context) or error
        yield prefix + _json_path(best)[1:], best.message[:300]


# ---------------------------------------------------------------------------------------------------------- policies

def image_problem(image: Any) -> str | None:
    """Why an image reference is not pinned, or None."""
    if not isinstance(image, str) or not image:
        return "no image"
    if "@sha256:" in image:
        return None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag at all (a registry port is not a tag)
        return f"image {image!r} has no tag (pin a version)"
    if tag in FLOATING_TAGS:
        return f"image {image!r} uses the floating tag {tag!r} (pin a version)"
    if not VERSIONED_TAG.search(tag):
        return f"image {image!r}: tag {tag!r} is not a major.minor version (pin a version)"
    return None


def _containers(doc: dict) -> Iterator[tuple[str, dict]]:
    """(JSON path, container) of every container of any pod template in a manifest, at any depth."""
    def walk(node: Any, path: str):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for i, c in enumerate(value):
                        if isinstance(c, dict):
                            yield f"{path}.{key}[{i}]", c
                else:
                    yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")
    yield from walk(doc, "$")


def _env_secret_problems(env: Any, path: str) -> Iterator[tuple[str, str]]:
    for i, entry in enumerate(env or []):
        if isinstance(entry, dict) and SECRET_NAME.search(str(entry.get("name", ""))) and "value" in entry:
            yield (f"{path}.env[{i}]", f"{entry['name']} is a secret written in the manifest: take it from a "
                                       "Secret (valueFrom.secretKeyRef)")
        ref = (entry.get("valueFrom") or {}).get("configMapKeyRef") if isinstance(entry, dict) else None
        if ref and SECRET_NAME.search(str(entry.get("name", ""))):
            yield f"{path}.env[{i}]", f"{entry['name']} comes from a ConfigMap: secrets belong in a Secret"


def _security_problems(sc: Any, path: str) -> Iterator[tuple[str, str]]:
    sc = sc or {}
    if sc.get("privileged"):
        yield f"{path}.securityContext.privileged", "privileged container"
    if sc.get("allowPrivilegeEscalation"):
        yield f"{path}.securityContext.allowPrivilegeEscalation", "privilege escalation allowed"
    added = ((sc.get("capabilities") or {}).get("add")) or []
    if any(c in ("SYS_ADMIN", "ALL", "NET_ADMIN") for c in added):
        yield f"{path}.securityContext.capabilities.add", f"adds capabilities {added}"


def k8s_policy(doc: dict) -> Iterator[tuple[str, str]]:
    kind = doc.get("kind")
    if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
        yield "$.data", "a Secret with values in the repository: create it out of band (kubectl create secret)"
    if kind == "ConfigMap":
        for key in (doc.get("data") or {}):
            if SECRET_NAME.search(key):
                yield f"$.data.{key}", f"{key} looks like a secret in a ConfigMap: use a Secret"

    def pod_level(node: Any, path: str):
        if isinstance(node, dict):
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                if node.get(flag) is True:
                    yield f"{path}.{flag}", f"{flag}: true"
            for key, value in node.items():
                yield from pod_level(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from pod_level(value, f"{path}[{i}]")
    yield from pod_level(doc, "$")

    for path, c in _containers(doc):
        if reason := image_problem(c.get("image")):
            yield f"{path}.image", reason
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (res.get(part) or {})]
            if missing:
                yield f"{path}.resources.{part}", f"container {c.get('name')!r} sets no {part} for {', '.join(missing)}"
        yield from _security_problems(c.get("securityContext"), path)
        yield from _env_secret_problems(c.get("env"), path)

    if kind == "SparkApplication":
        spec = doc.get("spec") or {}
        if reason := image_problem(spec.get("image")):
            yield "$.spec.image", reason
        for role in ("driver", "executor"):
            pod = spec.get(role) or {}
            path = f"$.spec.{role}"
            if reason := (image_problem(pod["image"]) if "image" in pod else None):
                yield f"{path}.image", reason
            missing = [k for k in ("cores", "coreLimit", "memory") if k not in pod]
            if missing:
                yield path, f"{role} sets no {', '.join(missing)}"
            yield from _security_problems(pod.get("securityContext"), path)
            yield from _env_secret_problems(pod.get("env"), path)


INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(text: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """Compose variable interpolation (${VAR}, ${VAR:-default}, ${VAR:?error}, $VAR, $$); returns the text and the
    variables that a `?` form requires but `env` lacks."""
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        value = env.get(name)
        if op and op.endswith("-"):
            return value if value not in (None, "") or (op == "-" and value is not None) else arg
        if op and op.endswith("?"):
            if value in (None, "") if op == ":?" else value is None:
                missing.append(name)
                return ""
        return value or ""

    parts = text.split("$$")  # $$ is a literal $
    return "$".join(INTERPOLATION.sub(sub, p) for p in parts), missing


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"').strip("'")
    return env


def compose_policy(raw: dict, resolved: dict) -> Iterator[tuple[str, str, str]]:
    """(service, path, message) for the Compose file: `raw` before interpolation, `resolved` after."""
    declared = set((resolved.get("volumes") or {}).keys())
    for name, svc in (resolved.get("services") or {}).items():
        raw_svc = (raw.get("services") or {}).get(name) or {}
        if reason := image_problem(svc.get("image")):
            yield name, "image", reason
        limits = (((svc.get("deploy") or {}).get("resources") or {}).get("limits")) or {}
        missing = [k for k in ("cpus", "memory") if k not in limits]
        if missing:
            yield name, "deploy.resources.limits", f"no limit for {', '.join(missing)}"
        if svc.get("privileged"):
            yield name, "privileged", "privileged container"
        if svc.get("network_mode") == "host" or svc.get("pid") == "host":
            yield name, "network_mode", "host network/PID namespace"
        if svc.get("cap_add"):
            yield name, "cap_add", f"adds capabilities {svc['cap_add']}"
        env = raw_svc.get("environment") or {}
        items = env.items() if isinstance(env, dict) else [tuple((e.split("=", 1) + [""])[:2]) for e in env]
        for key, value in items:
            if SECRET_NAME.search(str(key)) and value not in (None, "") and "${" not in str(value):
                yield name, f"environment.{key}", f"{key} is written in the Compose file: take it from .env (${{{key}}})"
        one_shot = svc.get("restart") in (None, "no") and "init" in name
        if not one_shot and not svc.get("healthcheck"):
            yield name, "healthcheck", "long-running service without a health check"
        for i, port in enumerate(svc.get("ports") or []):
            text = str(port if not isinstance(port, dict) else port.get("host_ip", ""))
            if not text.startswith("127.0.0.1:") and not (isinstance(port, dict) and port.get("host_ip") == "127.0.0.1"):
                yield name, f"ports[{i}]", f"port {port} is published on every interface (bind 127.0.0.1:)"
        for i, vol in enumerate(svc.get("volumes") or []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else (vol or {}).get("source", "")
            if source and not source.startswith((".", "/", "~")) and source not in declared:
                yield name, f"volumes[{i}]", f"named volume {source!r} is not declared under volumes:"


# ------------------------------------------------------------------------------------------------------ consistency

def _lock_version(root: Path, package: str) -> str | None:
    lock = root / "requirements.lock"
    if not lock.exists():
        return None
    m = re.search(rf"^{re.escape(package)}==([^\s;]+)", lock.read_text(), re.M)
    return m.group(1) if m else None


def project_image(root: Path) -> str:
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    return f"{PROJECT_IMAGE}:{version}"


@lru_cache(maxsize=32)
def _load_yaml_cached(path: Path, mtime_ns: int, size: int) -> Any:
    return yaml.load(path.read_text(), Loader=Loader)


def _load_yaml(path: Path) -> Any:
    st = path.stat()
    return _load_yaml_cached(path, st.st_mtime_ns, st.st_size)


def _stages(root: Path) -> set[str]:
    return set((_load_yaml(root / "dvc.yaml") or {}).get("stages", {}))


def _params(root: Path) -> dict:
    return _load_yaml(root / "params.yaml")


def _images_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _images_in(value)


def _stage_of_command(text: str) -> str | None:
    m = re.search(r"\bllmops run ([A-Za-z_]+)", text)
    return m.group(1) if m else None


def k8s_consistency(doc: dict, root: Path) -> Iterator[tuple[str, str, str]]:
    """(path, message, severity)."""
    image = project_image(root)
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    for found in _images_in(doc):
        if found.split(":")[0] == PROJECT_IMAGE and found != image:
            yield "image", f"project image {found!r} differs from {image!r} (pyproject version)", "error"
    if kind in ("RayCluster", "RayService"):
        cluster = spec if kind == "RayCluster" else spec.get("rayClusterConfig") or {}
        want = _lock_version(root, "ray")
        if want and cluster.get("rayVersion") != want:
            yield "spec.rayVersion", f"rayVersion {cluster.get('rayVersion')!r} but requirements.lock has ray=={want}", \
                "error"
    params = _params(root)
    if kind == "RayCluster":
        ft = params["finetune"]
        groups = spec.get("workerGroupSpecs") or []
        cpus = sum(int(g.get("replicas", 0)) * int(float((g.get("rayStartParams") or {}).get("num-cpus", 0)))
                   for g in groups)
        need = ft["num_workers"] * ft["cpus_per_worker"]
        if cpus < need:
            yield "spec.workerGroupSpecs", (f"worker groups offer {cpus} CPUs; finetune needs num_workers x "
                                            f"cpus_per_worker = {need}"), "error"
        nodes = sum(int(g.get("replicas", 0)) for g in groups)
        if nodes < ft["num_workers"]:
            yield "spec.workerGroupSpecs", (f"{nodes} worker pods for finetune.num_workers={ft['num_workers']} "
                                            "with one worker per node (placement SPREAD)"), "error"
    if kind == "RayJob":
        stage = _stage_of_command(str(spec.get("entrypoint", "")))
        if stage is None or stage not in _stages(root):
            yield "spec.entrypoint", f"entrypoint {spec.get('entrypoint')!r} runs no dvc.yaml stage", "error"
    if kind == "SparkApplication":
        args = spec.get("arguments") or []
        if len(args) < 2 or args[0] != "run" or args[1] not in _stages(root):
            yield "spec.arguments", f"arguments {args} run no dvc.yaml stage (expected [run, <stage>])", "error"
        want = _lock_version(root, "pyspark")
        if want and spec.get("sparkVersion") != want:
            yield "spec.sparkVersion", f"sparkVersion {spec.get('sparkVersion')!r} but requirements.lock has " \
                                       f"pyspark=={want}", "error"
    if kind == "RayService":
        try:
            serve_cfg = yaml.safe_load(spec.get("serveConfigV2") or "") or {}
        except yaml.YAMLError as exc:
            yield "spec.serveConfigV2", f"not YAML: {exc}", "error"
            return
        want = params["serve"]["ray"]
        for app in serve_cfg.get("applications") or []:
            module, _, attr = str(app.get("import_path", "")).partition(":")
            source = root / (module.replace(".", "/") + ".py")
            if not source.exists() or not re.search(rf"^(def {re.escape(attr)}\b|{re.escape(attr)}\s*=)",
                                                    source.read_text(), re.M):
                yield "spec.serveConfigV2.import_path", (f"{app.get('import_path')!r}: no `{attr}` in {module} "
                                                         "(an application builder Ray Serve can import)"), "warning"
            for dep in app.get("deployments") or []:
                auto = dep.get("autoscaling_config") or {}
                for key in ("min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s",
                            "downscale_delay_s"):
                    if auto.get(key) != want.get(key):
                        yield f"spec.serveConfigV2.{dep.get('name')}.autoscaling_config.{key}", \
                            f"{auto.get(key)!r} but params.yaml serve.ray.{key} is {want.get(key)!r}", "error"
                if (dep.get("ray_actor_options") or {}).get("num_cpus") != want.get("num_cpus"):
                    yield f"spec.serveConfigV2.{dep.get('name')}.ray_actor_options.num_cpus", \
                        f"not params.yaml serve.ray.num_cpus ({want.get('num_cpus')})", "error"


def _missing_keys(overlay: Any, base: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(overlay, dict):
        for key, value in overlay.items():
            dotted = f"{prefix}{key}"
            if not isinstance(base, dict) or key not in base:
                yield dotted
            elif isinstance(value, dict):
                yield from _missing_keys(value, base[key], dotted + ".")


def serving_metric_names(root: Path) -> set[str]:
    """Series names the serving app exports (prometheus_client: counters get `_total`, histograms `_bucket`...)."""
    names: set[str] = set()
    src = root / "pipelines" / "serving" / "metrics.py"
    for kind, name in re.findall(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-z_:][a-z0-9_:]*)\"", src.read_text()):
        suffixes = {"Counter": ["_total", "_created"], "Gauge": [""],
                    "Histogram": ["_bucket", "_count", "_sum", "_created"], "Summary": ["", "_count", "_sum"]}[kind]
        names.update(name + s for s in suffixes)
    return names


# ---------------------------------------------------------------------------------------------------------- drivers

def _yaml_docs(path: Path, rel: str, report: Report) -> list[Any]:
    try:
        return [d for d in yaml.load_all(path.read_text(), Loader=Loader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark else "?"
        report.problems.append(Problem(rel, "", "parse", line, f"not valid YAML: {getattr(exc, 'problem', exc)}"))
        return []


def validate_manifest(path: Path, root: Path, report: Report) -> None:
    rel = str(path.relative_to(root))
    docs = _yaml_docs(path, rel, report)
    report.files.append({"file": rel, "kind": "kubernetes", "documents": len(docs)})
    meta_validator = _object_meta_validator()
    for doc in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            report.problems.append(Problem(rel, "", "schema", "$", "a document without apiVersion and kind"))
            continue
        api, kind = doc["apiVersion"], doc["kind"]
        where = f"{kind}/{(doc.get('metadata') or {}).get('name', '?')}"
        if (api, kind) in CRD_SCHEMAS:
            validator = _crd_validator(str(root), api, kind)
            for p, msg in _schema_errors(meta_validator, doc.get("metadata") or {}, "$.metadata"):
                report.problems.append(Problem(rel, where, "schema", p, msg))
        else:
            validator = _k8s_validator(api, kind)
            if validator is None:
                report.problems.append(Problem(rel, where, "schema", "$.kind",
                                               f"no schema for {api} {kind} (Kubernetes {KUBERNETES_VERSION} or "
                                               "the vendored CRDs)"))
                continue
        schema_errors = list(_schema_errors(validator, doc))
        for p, msg in schema_errors:
            report.problems.append(Problem(rel, where, "schema", p, msg))
        for p, msg in k8s_policy(doc):
            report.problems.append(Problem(rel, where, "policy", p, msg))
        if schema_errors:  # the consistency checks read typed fields: only on a document that has its schema's shape
            continue
        for p, msg, severity in k8s_consistency(doc, root):
            report.problems.append(Problem(rel, where, "consistency", p, msg, severity))


def validate_compose(path: Path, env_file: Path, root: Path, report: Report) -> None:
    import jsonschema

    rel = str(path.relative_to(root))
    report.files.append({"file": rel, "kind": "compose", "documents": 1})
    if not env_file.exists():
        report.problems.append(Problem(rel, "", "policy", str(env_file.name), f"{env_file.name} (example env) missing"))
        env = {}
    else:
        env = read_env_file(env_file)
    text = path.read_text()
    try:
        raw = yaml.load(text, Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        report.problems.append(Problem(rel, "", "parse", f"line {mark.line + 1}" if mark else "?",
                                       f"not valid YAML: {getattr(exc, 'problem', exc)}"))
        return
    missing: list[str] = []

    def resolve(node: Any) -> Any:  # Compose interpolates the parsed values (strings), not the file text
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        if isinstance(node, str):
            value, lacking = interpolate(node, env)
            missing.extend(lacking)
            return value
        return node

    resolved = resolve(raw)
    for name in sorted(set(missing)):
        report.problems.append(Problem(rel, "", "consistency", f"${{{name}}}",
                                       f"{name} is required but not in {env_file.name}"))
    # x-* extension fields (YAML anchors) are allowed by the spec; merged keys are already resolved by PyYAML
    validator = jsonschema.Draft7Validator(_load_gz(root / SCHEMAS / COMPOSE_SCHEMA))
    for p, msg in _schema_errors(validator, resolved):
        report.problems.append(Problem(rel, "", "schema", p, msg))
    for service, p, msg in compose_policy(raw, resolved):
        report.problems.append(Problem(rel, f"service {service}", "policy", f"$.services.{service}.{p}", msg))
    image = project_image(root)
    for service, svc in (resolved.get("services") or {}).items():
        found = str(svc.get("image", ""))
        if found.split(":")[0] == PROJECT_IMAGE and found != image:
            report.problems.append(Problem(rel, f"service {service}", "consistency", f"$.services.{service}.image",
                                           f"project image {found!r} differs from {image!r} (pyproject version)"))
    serving = (resolved.get("services") or {}).get("serving") or {}
    port = _params(root)["serve"]["port"]
    if serving and not any(str(p).endswith(f":{port}") for p in serving.get("ports") or []):
        report.problems.append(Problem(rel, "service serving", "consistency", "$.services.serving.ports",
                                       f"does not publish params.yaml serve.port {port}"))


def validate_monitoring(compose_dir: Path, root: Path, report: Report) -> None:
    port = _params(root)["serve"]["port"]
    prom = compose_dir / "prometheus" / "prometheus.yml"
    rel = str(prom.relative_to(root))
    report.files.append({"file": rel, "kind": "prometheus", "documents": 1})
    cfg = (_yaml_docs(prom, rel, report) or [{}])[0]
    targets = [t for job in cfg.get("scrape_configs") or [] for sc in job.get("static_configs") or []
               for t in sc.get("targets") or []]
    if f"serving:{port}" not in targets:
        report.problems.append(Problem(rel, "", "consistency", "$.scrape_configs",
                                       f"no scrape target serving:{port} (params.yaml serve.port)"))
    exported = serving_metric_names(root)
    for dash in sorted((compose_dir / "grafana" / "dashboards").glob("*.json")):
        rel = str(dash.relative_to(root))
        report.files.append({"file": rel, "kind": "grafana", "documents": 1})
        try:
            board = json.loads(dash.read_text())
        except json.JSONDecodeError as exc:
            report.problems.append(Problem(rel, "", "parse", f"line {exc.lineno}", f"not valid JSON: {exc.msg}"))
            continue
        for i, panel in enumerate(board.get("panels") or []):
            for j, target in enumerate(panel.get("targets") or []):
                for metric in set(re.findall(r"\b(llmops_[a-z0-9_]+)", target.get("expr", ""))):
                    if metric not in exported:
                        report.problems.append(Problem(
                            rel, f"panel {panel.get('title')!r}", "consistency", f"$.panels[{i}].targets[{j}].expr",
                            f"{metric} is not a series the serving app exports (pipelines/serving/metrics.py)"))


def validate_helm_values(path: Path, root: Path, report: Report) -> None:
    rel = str(path.relative_to(root))
    values = (_yaml_docs(path, rel, report) or [{}])[0]
    report.files.append({"file": rel, "kind": "helm-values", "documents": 1})
    schema_path = root / SCHEMAS / AIRFLOW_CHART_SCHEMA
    if schema_path.exists():
        import jsonschema

        for p, msg in _schema_errors(jsonschema.Draft7Validator(json.loads(schema_path.read_text())), values):
            report.problems.append(Problem(rel, "", "schema", p, msg))
    else:
        report.problems.append(Problem(rel, "", "schema", "$", f"the chart's values.schema.json is not vendored "
                                       f"({SCHEMAS}/{AIRFLOW_CHART_SCHEMA}); only policies checked", "warning"))
    image = project_image(root)
    repo, tag = (values.get("images") or {}).get("airflow", {}).get("repository"), \
        str((values.get("images") or {}).get("airflow", {}).get("tag", ""))
    if f"{repo}:{tag}" != image:
        report.problems.append(Problem(rel, "", "consistency", "$.images.airflow",
                                       f"{repo}:{tag} is not the project image {image}"))
    if reason := image_problem(f"{repo}:{tag}"):
        report.problems.append(Problem(rel, "", "policy", "$.images.airflow", reason))
    want = _lock_version(root, "apache-airflow")
    if want and str(values.get("airflowVersion")) != want:
        report.problems.append(Problem(rel, "", "consistency", "$.airflowVersion",
                                       f"{values.get('airflowVersion')!r} but requirements.lock has apache-airflow=={want}"))
    for component in ("apiServer", "scheduler", "dagProcessor", "triggerer", "workers"):
        res = (values.get(component) or {}).get("resources") or {}
        for part in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (res.get(part) or {})]
            if missing:
                report.problems.append(Problem(rel, component, "policy", f"$.{component}.resources.{part}",
                                               f"no {part} for {', '.join(missing)}"))

    def secrets(node: Any, p: str):
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and value and re.search(r"(password|secret|fernetKey$|token)", key, re.I) \
                        and not re.search(r"(SecretName|secretName|Secret$)", key):
                    yield f"{p}.{key}"
                yield from secrets(value, f"{p}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from secrets(value, f"{p}[{i}]")
    for p in secrets(values, "$"):
        report.problems.append(Problem(rel, "", "policy", p, "a secret value in the Helm values: reference a Secret "
                                       "(…SecretName) instead"))
    for i, entry in enumerate(values.get("env") or []):
        if SECRET_NAME.search(str(entry.get("name", ""))) and "value" in entry:
            report.problems.append(Problem(rel, "", "policy", f"$.env[{i}]", f"{entry['name']} written in the values"))


def validate_params_overlay(path: Path, root: Path, report: Report) -> None:
    rel = str(path.relative_to(root))
    overlay = (_yaml_docs(path, rel, report) or [{}])[0] or {}
    report.files.append({"file": rel, "kind": "params-overlay", "documents": 1})
    for dotted in _missing_keys(overlay, _params(root)):
        report.problems.append(Problem(rel, "", "consistency", dotted, f"{dotted} is not a key of params.yaml"))


def validate_all(root: str | Path) -> Report:
    """Every file under infra/compose and infra/k8s, plus the params overlay."""
    root = Path(root).resolve()
    report = Report()
    infra = root / INFRA
    compose_dir = infra / "compose"
    if (compose_dir / "compose.yaml").exists():
        validate_compose(compose_dir / "compose.yaml", compose_dir / ".env.example", root, report)
        validate_monitoring(compose_dir, root, report)
    for path in sorted((infra / "k8s").rglob("*.yaml")):
        if path.parent.name == "airflow" and path.name.startswith("values"):
            validate_helm_values(path, root, report)
        else:
            validate_manifest(path, root, report)
    if (infra / "params.cluster.yaml").exists():
        validate_params_overlay(infra / "params.cluster.yaml", root, report)
    return report
