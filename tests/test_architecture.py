"""The architecture as docs/architecture.md states it, checked against the code.

The import graph is built with ``ast`` from every module of ``acmeq/`` — imports at the top, inside
functions (lazy) and under ``TYPE_CHECKING`` alike — so a circle or a forbidden import cannot hide
behind a lazy import.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from acmeq import keys

from conftest import ROOT

PACKAGE = ROOT / "acmeq"
DOC = ROOT / "docs" / "architecture.md"
CORE = (
    "acmeq.config",
    "acmeq.storage",
    "acmeq.queues",
    "acmeq.keys",
    "acmeq.errors",
    "acmeq.constants",
    "acmeq.allowlist",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path) -> Iterator[str]:
    """Every module an import statement of ``path`` names, wherever the statement is.

    ``from pkg import sub`` names ``pkg.sub`` when that is a module, else ``pkg`` (a package's
    ``__init__`` run on the way to a submodule is not an edge: every import of a submodule runs it).
    """
    is_package = path.name == "__init__.py"
    mods = _modules()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                yield sub if sub in mods else module


@cache
def _graph() -> dict[str, set[str]]:
    """acmeq module -> the acmeq modules it imports, plus third-party top-level names."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for target in _imported(name, path):
            if not target.startswith("acmeq"):
                edges.add(target.split(".")[0])
                continue
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        todo += [w for w in graph.get(v, ()) if w.startswith("acmeq")]
    return seen


# -- the rules ------------------------------------------------------------------------------------


def test_there_are_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_core_never_imports_typer_or_rich() -> None:
    graph = _graph()
    core = [m for m in graph if any(m == c or m.startswith(c + ".") for c in CORE)]
    assert len(core) > 10
    for module in core:
        for reached in _reachable(module, graph):
            bad = graph[reached] & {"typer", "rich"}
            assert not bad, f"{module} imports {sorted(bad)} (through {reached})"


def test_status_does_not_load_prometheus_client() -> None:
    # `acmeq status` imports the CLI, its command and the status module; none may pull it in.
    code = (
        "import sys, acmeq.cli, acmeq.commands.status, acmeq.observability.status; "
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_only_the_metrics_page_imports_prometheus_client() -> None:
    users = {m for m, edges in _graph().items() if "prometheus_client" in edges}
    assert users <= {"acmeq.observability.prometheus"} | {
        m for m in users if m.startswith("acmeq.web")
    }


# -- the document ---------------------------------------------------------------------------------


def test_every_module_is_in_the_package_map() -> None:
    doc = DOC.read_text(encoding="utf-8")
    missing = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if "/migrations/versions/" in rel:
            continue
        if path.name == "__init__.py" and path.parent != PACKAGE:
            continue  # a package is its folder's heading
        if f"`{rel}`" not in doc:
            missing.append(rel)
    assert not missing, f"not in docs/architecture.md (run scripts/gen-architecture): {missing}"


def test_the_key_table_is_generated_from_keys_py() -> None:
    doc = DOC.read_text(encoding="utf-8")
    block = doc.split("<!-- keys:begin -->\n", 1)[1].split("\n<!-- keys:end -->", 1)[0]
    assert block == keys.markdown_table(), "run scripts/gen-architecture"


def test_every_exception_class_is_in_the_tree_of_errors_py_and_the_docs() -> None:
    from acmeq import errors

    classes = [
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == errors.__name__
    ]
    assert {"AcmeqError", "JobNotFoundError", "ProgressNotFoundError", "AlertChannelError"} <= set(
        classes
    )
    doc = DOC.read_text(encoding="utf-8")
    docstring = errors.__doc__ or ""
    for name in classes:
        assert re.search(rf"\b{name}\b", docstring), f"{name} is not in errors.py's tree"
        assert re.search(rf"\b{name}\b", doc), f"{name} is not in docs/architecture.md"


def test_the_docs_refer_to_nothing_outside_the_repository() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert "shared/" not in doc and "seed-queue-infrastructure" not in doc
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc):
        if target.startswith(("http://", "https://")):
            continue
        resolved = (DOC.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), target
        assert resolved.exists(), f"broken link {target}"


def test_redis_keys_are_spelt_only_in_keys_py() -> None:
    # The app's own cache/session prefixes (what `acmeq cleanup` may sweep) are configuration,
    # and the guard that refuses a sweep of rq:/acmeq: keys names them on purpose.
    allowed = {"acmeq:cache:", "acmeq:session:", "rq:", "acmeq:"}
    found = []
    for name, path in _modules().items():
        if name == "acmeq.keys":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                continue
            if node.value in allowed or "\n" in node.value:  # Lua scripts build keys themselves
                continue
            if re.match(r"(rq|acmeq):[a-z{]", node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, "spell these through acmeq/keys.py: " + "; ".join(found)


def test_every_exception_class_is_defined_in_errors_py() -> None:
    # A module-private exception (``_Reconnect``) that never leaves its module may stay there.
    from acmeq import errors

    known = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)}
    known |= {"Exception", "BaseException"}
    found = []
    for name, path in _modules().items():
        if name == "acmeq.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            if {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases} & known:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not found, "define these in acmeq/errors.py (and draw them in its tree): " + "; ".join(
        found
    )
