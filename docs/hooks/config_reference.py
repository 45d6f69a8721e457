"""The configuration reference page, generated from the typed configs at every docs build (a mkdocs hook).

Every top-level section of params.yaml is matched with the pydantic model that parses it: a stage's `Config`
(pipelines/stages/registry.py: STAGES), a shared section (SHARED_SECTIONS), and any other section the code parses
with `parse_section(params, "<section>", Model)` or `load_section("<section>", Model)` (found by reading the code,
so a new section shows up without editing this file). Each model is walked field by field, nested models included:
dotted key, type, bounds (pydantic constraints and Literal choices), the value params.yaml ships with, and the
meaning (the Field's description, else the comment on the field's line in the model's source, else the comment on
the key's line in params.yaml). A section of params.yaml that no model parses is reported as a build warning, so
`mkdocs build --strict` (`make docs`, tests/test_docs.py) fails: the reference cannot drift from the code.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
PAGE = "reference/configuration.md"
log = logging.getLogger("mkdocs.plugins.config_reference")


# --- which model parses which section ------------------------------------------------------------------------

def _resolve(expr: ast.expr, tree: ast.Module, module: str) -> type | None:
    """The class a model expression (`Name` or `alias.Name`) of `module` refers to, from the file's imports."""
    head, attr = (expr.id, None) if isinstance(expr, ast.Name) else (
        (expr.value.id, expr.attr) if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name)
        else (None, None))
    if head is None:
        return None
    target: str | None = None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == head:
                    target = f"{node.module}:{alias.name}" if attr is None else f"{node.module}.{alias.name}:{attr}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname == head and attr:
                    target = f"{alias.name}:{attr}"
        elif isinstance(node, ast.ClassDef) and node.name == head and attr is None:
            target = f"{module}:{head}"
    if target is None:
        return None
    mod, name = target.split(":")
    try:
        return getattr(importlib.import_module(mod), name, None)
    except ImportError:
        return None


def _parsed_sections() -> dict[str, type]:
    """section -> model, from every `parse_section(_, "s", M)` / `load_section("s", M)` call under pipelines/."""
    found: dict[str, type] = {}
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            args = node.args
            if name == "parse_section" and len(args) >= 3:
                section, model = args[1], args[2]
            elif name == "load_section" and len(args) >= 2:
                section, model = args[0], args[1]
            else:
                continue
            if isinstance(section, ast.Constant) and isinstance(section.value, str) and "." not in section.value:
                cls = _resolve(model, tree, module)
                if isinstance(cls, type) and issubclass(cls, BaseModel):
                    found.setdefault(section.value, cls)
    return found


def section_models() -> dict[str, type[BaseModel]]:
    sys.path.insert(0, str(ROOT))
    from pipelines.stages.registry import SHARED_SECTIONS, STAGES, stage_module

    models: dict[str, type[BaseModel]] = {}
    for name in STAGES:
        module = stage_module(name)
        models[module.SECTION] = module.Config
    for section, model in SHARED_SECTIONS.values():
        if "." not in section:
            models.setdefault(section, model)
    for section, model in _parsed_sections().items():
        models.setdefault(section, model)
    return models


# --- params.yaml comments --------------------------------------------------------------------------------------

_KEY = re.compile(r"^(?P<indent>\s*)(?P<dash>-\s+)?(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")


def _comment(rest: str) -> str:
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1] in " \t"):
            return rest[i + 1:].strip()
    return ""


def params_comments(text: str) -> dict[str, str]:
    """Dotted key -> the comment on its line in params.yaml (list entries as `key[]`)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []  # full-line comments right above a key describe it when its own line has none
    for line in text.splitlines():
        m = _KEY.match(line)
        if not m:
            stripped = line.strip()
            above = above + [stripped.lstrip("#").strip()] if stripped.startswith("#") else []
            continue
        indent = len(m["indent"])
        if m["dash"]:  # "- key:" opens a list entry: its keys sit under the list's key, as key[]
            while stack and stack[-1][0] >= indent:
                stack.pop()
            if stack and not stack[-1][1].endswith("[]"):
                stack[-1] = (stack[-1][0], stack[-1][1] + "[]")
            indent += len(m["dash"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        path = ".".join(k for _, k in stack)
        note = _comment(m["rest"]) or " ".join(above)
        above = []
        if note and path not in comments:
            comments[path] = note
    return comments


# --- walking a model ---------------------------------------------------------------------------------------------

def _source_comments(model: type) -> dict[str, str]:
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    notes = {}
    for line in source.splitlines():
        m = re.match(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            notes.setdefault(m[1], m[2].strip())
    return notes


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f'`{a}`' if not isinstance(a, str) else f'`"{a}"`' for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin in (list, tuple, set, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args if a is not Ellipsis)}]"
    if _is_model(tp):
        return "section"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _bounds(metadata: list[Any], tp: Any) -> str:
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "len ≥", "max_length": "len ≤",
             "multiple_of": "multiple of"}
    out = []
    for item in metadata:
        for attr, mark in marks.items():
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{mark} {value}")
    if typing.get_origin(tp) is typing.Annotated:
        out += [b for b in [_bounds(list(typing.get_args(tp)[1:]), None)] if b]
    return ", ".join(out)


def _nested(tp: Any) -> tuple[str, type[BaseModel]] | None:
    """A model inside the annotation, with the key suffix it sits under: '' (direct or optional), '[]', '.<key>'."""
    if _is_model(tp):
        return "", tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _nested(args[0])
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if (found := _nested(a)) is not None:
                return found
    if origin in (list, tuple, set) and args and (found := _nested(args[0])) is not None:
        return "[]" + found[0], found[1]
    if origin is dict and len(args) == 2 and (found := _nested(args[1])) is not None:
        return ".&lt;name&gt;" + found[0], found[1]
    return None


def _value(values: Any, key: str) -> Any:
    if isinstance(values, dict):
        return values.get(key, "—")
    return "—"


def _show(value: Any) -> str:
    if value == "—":
        return "—"
    if isinstance(value, (dict, list)) and len(yaml.safe_dump(value, default_flow_style=True)) > 60:
        return f"({len(value)} entries)"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return "`" + text + "`"


def walk(model: type[BaseModel], prefix: str, values: Any, yaml_notes: dict[str, str]) -> list[dict[str, str]]:
    rows = []
    source_notes = _source_comments(model)
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}"
        tp = info.annotation
        if info.metadata and typing.get_origin(tp) is not typing.Annotated:
            bounds = _bounds(info.metadata, tp)
        else:
            bounds = _bounds([], tp)
        meaning = info.description or source_notes.get(name) or yaml_notes.get(key) or ""
        if not meaning and name in CONVENTIONS:
            meaning = f"*{CONVENTIONS[name]}*"
        value = _value(values, name)
        nested = _nested(tp)
        kind = type_name(tp) + ("" if info.is_required() else " (optional)")
        rows.append({"key": key, "type": kind, "bounds": bounds, "value": _show(value) if not nested or
                     nested[0] else "", "meaning": meaning})
        if nested:
            suffix, sub = nested
            if suffix == "":
                rows += walk(sub, key, value if isinstance(value, dict) else {}, yaml_notes)
            elif suffix.startswith("[]"):
                first = value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}
                rows += walk(sub, key + "[]", first, yaml_notes)
            else:
                first = next(iter(value.values()), {}) if isinstance(value, dict) and value else {}
                rows += walk(sub, key + suffix, first if isinstance(first, dict) else {}, yaml_notes)
    return rows


# Conventions every stage follows, said once: the meaning of a key that has no comment of its own.
CONVENTIONS = {
    "metrics": "the stage's metrics file (a DVC metric, git-tracked)",
    "output_dir": "where the stage writes its output (a DVC output)",
    "input_dir": "the upstream output the stage reads",
    "rejects_dir": "the rejects table: every dropped record with its reason and rule",
    "results_dir": "the validation summary of the latest run (one JSON per suite)",
    "suite": "the Great Expectations suite the stage builds from its params and runs",
    "non_blocking": "expectation types reported as warnings (GX severity) that never stop the run",
    "report": "the HTML report the stage writes",
    "seed": "seed of every random choice the stage makes (reruns are identical)",
    "enabled": "switch this part on or off",
    "engine": "`pandas` batches on the driver, or `spark` DataFrames on the session of `engines.spark`",
}


def _cell(text: str) -> str:
    return str(text).replace("\n", " ").replace("|", "\\|")


def render_reference(params_path: Path | None = None) -> tuple[str, list[str]]:
    """The page (Markdown) and the sections of params.yaml no typed config parses."""
    params_path = params_path or ROOT / "params.yaml"
    text = params_path.read_text(encoding="utf-8")
    params = yaml.safe_load(text)
    notes = params_comments(text)
    models = section_models()
    untyped = [s for s in params if s not in models]
    keys = 0
    silent: list[str] = []
    body: list[str] = []
    for section, values in params.items():
        model = models.get(section)
        body.append(f"## `{section}`\n")
        own_doc = model.__dict__.get("__doc__") if model else None  # not StageConfig's, inherited
        doc = inspect.cleandoc(own_doc).split("\n\n")[0].replace("\n", " ") if own_doc else ""
        if notes.get(section):
            body.append(f"{notes[section]}\n")
        elif doc:
            body.append(f"{doc}\n")
        if model is None:
            body.append("!!! warning \"No typed config parses this section\"\n")
            continue
        body.append(f"Model: `{model.__module__}.{model.__qualname__}`\n")
        body.append("| key | type | bounds | in params.yaml | meaning |")
        body.append("|---|---|---|---|---|")
        for row in walk(model, section, values, notes):
            keys += 1
            if not row["meaning"] and row["type"] != "section":
                silent.append(row["key"])
            body.append(f"| `{row['key']}` | {row['type']} | {row['bounds']} | {_cell(row['value'])} | "
                        f"{_cell(row['meaning'])} |")
        body.append("")
    head = [
        "# Configuration reference",
        "",
        "Generated from the typed configs at every docs build (`docs/hooks/config_reference.py`): each section of "
        "`params.yaml`, the pydantic model that parses it, and every key with its type, bounds, the value the "
        "repository ships with and its meaning. Every key is required unless marked *optional*: a missing or "
        "unknown key stops a stage before it runs, naming its dotted key "
        "(`params.yaml: missing key 'dedup.near_duplicate.bands'`).",
        "",
        f"{len(params)} sections, {keys} keys. Keys under `[]` belong to each entry of a list; `<name>` stands for "
        "a key of your choice. A YAML anchor written once (`cost: &prices`) shows again where it is aliased "
        "(`evaluate.cost`, `serve.cost`).",
        "",
        "Sections: " + ", ".join(f"[`{s}`](#{s})" for s in params),
        "",
        f"Meanings come from the model (a `Field` description or the comment on the field's line), else from the "
        f"comment on the key in `params.yaml`; *italics*: a convention every stage shares. {len(silent)} keys have "
        f"no comment yet; their name, type and value are all there is.",
        "",
    ]
    return "\n".join(head + body) + "\n", untyped


# --- the mkdocs hook ---------------------------------------------------------------------------------------------

def on_files(files, config):  # noqa: ANN001 (mkdocs hook signature)
    from mkdocs.structure.files import File

    page, untyped = render_reference()
    for section in untyped:
        log.warning("params.yaml section '%s' is parsed by no typed config (configuration reference)", section)
    files.append(File.generated(config, PAGE, content=page))
    return files
