"""params.yaml + infra/params.cluster.yaml -> the deployment's params file (run at image build).

    python infra/render_params.py params.yaml infra/params.cluster.yaml -o params.cluster.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.config import deep_merge  # noqa: E402  (floor 0, no heavy import)


def render(base: Path, overlay: Path) -> dict:
    return deep_merge(yaml.safe_load(base.read_text()), yaml.safe_load(overlay.read_text()) or {})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("overlay", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    args.output.write_text(yaml.safe_dump(render(args.base, args.overlay), sort_keys=False))


if __name__ == "__main__":
    main()
