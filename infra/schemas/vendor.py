"""Re-vendor the CRD and Compose JSON schemas from local clones of their upstream repositories.

    python infra/schemas/vendor.py --kuberay ~/src/kuberay --spark-operator ~/src/spark-operator --compose-spec ~/src/compose-spec

Each CRD's `openAPIV3Schema` (per served version) is written as minified, gzipped JSON under
`infra/schemas/<project>/`; SOURCES.json records repository, tag, commit, path, blob and licence of each file. The
validator (`infra/validate.py`) reads only these files: nothing is downloaded at validation time.
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

CRDS = {
    "kuberay": ("https://github.com/ray-project/kuberay", "v1.7.0", "helm-chart/kuberay-operator/crds",
                ["ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml"]),
    "spark-operator": ("https://github.com/kubeflow/spark-operator", "v2.5.2", "charts/spark-operator-chart/crds",
                       ["sparkoperator.k8s.io_sparkapplications.yaml"]),
}
COMPOSE = ("https://github.com/compose-spec/compose-spec", "schema/compose-spec.json")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _write_gz(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with gzip.GzipFile(path, "wb", mtime=0) as fh:  # mtime 0: the same input gives the same bytes
        fh.write(data)


def vendor_crds(project: str, repo: Path, sources: list[dict]) -> None:
    url, tag, folder, files = CRDS[project]
    commit = _git(repo, "rev-list", "-n1", tag).strip()
    for name in files:
        path = f"{folder}/{name}"
        crd = yaml.safe_load(_git(repo, "show", f"{tag}:{path}"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("storage"):  # the version the API server stores: v1 (KubeRay), v1beta2 (Spark)
                continue
            out = HERE / project / f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json.gz"
            _write_gz(out, version["schema"]["openAPIV3Schema"])
            sources.append({"file": str(out.relative_to(HERE)), "apiVersion": f"{group}/{version['name']}",
                            "kind": kind, "repository": url, "tag": tag, "commit": commit, "path": path,
                            "blob": _git(repo, "rev-parse", f"{tag}:{path}").strip(), "licence": "Apache-2.0"})


def vendor_compose(repo: Path, sources: list[dict]) -> None:
    url, path = COMPOSE
    commit = _git(repo, "log", "-n1", "--format=%H", "HEAD", "--", path).strip()
    schema = json.loads(_git(repo, "show", f"{commit}:{path}"))
    out = HERE / "compose" / "compose-spec.json.gz"
    _write_gz(out, schema)
    sources.append({"file": str(out.relative_to(HERE)), "repository": url, "tag": None, "commit": commit,
                    "path": path, "blob": _git(repo, "rev-parse", f"{commit}:{path}").strip(),
                    "licence": "Apache-2.0"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kuberay", type=Path, required=True)
    ap.add_argument("--spark-operator", type=Path, required=True)
    ap.add_argument("--compose-spec", type=Path, required=True)
    args = ap.parse_args()
    sources: list[dict] = []
    vendor_crds("kuberay", args.kuberay, sources)
    vendor_crds("spark-operator", args.spark_operator, sources)
    vendor_compose(args.compose_spec, sources)
    (HERE / "SOURCES.json").write_text(json.dumps(sources, indent=2) + "\n")
    for s in sources:
        print(s["file"], s.get("tag") or s["commit"][:12])


if __name__ == "__main__":
    main()
