"""One docs page per benchmark result note (bench/results/*.md), generated at every build (a mkdocs hook): the
pages are the files the benchmarks write, never copies that could fall behind them."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench_pages() -> dict[str, str]:
    """docs path -> content, one per bench/results/*.md."""
    pages = {}
    for path in sorted((ROOT / "bench" / "results").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        note = (f"\n\n*Written by the benchmark: `bench/results/{path.name}` (raw figures, where there are any, in "
                f"`bench/results/{path.stem}.json`).*\n")
        pages[f"benchmarks/{path.stem}.md"] = text.rstrip() + note
    return pages


def on_files(files, config):  # noqa: ANN001 (mkdocs hook signature)
    from mkdocs.structure.files import File

    for src, content in bench_pages().items():
        files.append(File.generated(config, src, content=content))
    return files
