"""The import graph of `lima_jax` runs one way (ARCHITECTURE.md, "The layout: second pass").

Every `import` in every module counts, the ones inside functions too: a lazy import still makes
the importer depend on the module it names, and only hides the edge from a reader.
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from support.paths import REPO

PACKAGE = REPO / "lima_jax"
# From the bottom up. A module may import from its own layer and the layers below, never above.
LAYERS = (
    ("base", ("lima_jax.errors", "lima_jax.log", "lima_jax.storage", "lima_jax.sharding")),
    ("model", ("lima_jax.model",)),
    ("data, weights, lora", ("lima_jax.data", "lima_jax.weights", "lima_jax.lora")),
    ("config", ("lima_jax.config", "lima_jax.recipe")),
    ("train, inference", ("lima_jax.train", "lima_jax.inference")),
    ("applications", ("lima_jax.serve", "lima_jax.evaluate", "lima_jax.ablate", "lima_jax.bench",
                      "lima_jax.curate")),
    ("command line", ()),  # the commands and each `cli.py`, wherever they live
)
COMMAND = re.compile(r'^if __name__ == "__main__":', re.M)


@functools.cache
def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _owner(name: str) -> str | None:
    """The module that `import name` loads last (`a.b.f` where f is a function of a.b -> `a.b`)."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def imports() -> dict[str, frozenset[str]]:
    """Module -> the lima_jax modules it imports anywhere in its body."""
    graph = {}
    for module, path in modules().items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        named = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                named.update(f"{base}.{alias.name}" for alias in node.names)
        graph[module] = frozenset(o for n in named if n.startswith("lima_jax") and (o := _owner(n)) not in (None, module))
    return graph


def commands() -> set[str]:
    """Modules run as `python -m ...`: nothing else may import them (they define flags at import)."""
    return {m for m, p in modules().items() if p.name == "__main__.py" or COMMAND.search(p.read_text())}


def command_line() -> set[str]:
    """The commands and the modules that hold flag groups for them (`cli.py`): the top layer."""
    return commands() | {m for m in modules() if m.rpartition(".")[2] == "cli"}


def layer(module: str) -> int:
    if module == "lima_jax":
        return 0  # the package itself: it sets up logging and storage before any module loads
    if module in command_line():
        return len(LAYERS) - 1
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer of LAYERS: add it where it belongs"
    return max(matches)[1]


def test_every_module_is_in_a_layer_and_imports_none_above_it():
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
              for m, targets in imports().items() if m != "lima_jax" for t in targets if layer(t) > layer(m)]
    assert not upward, "\n".join(sorted(upward))


def test_the_model_imports_no_stage():
    model = {m: t for m, t in imports().items() if m == "lima_jax.model" or m.startswith("lima_jax.model.")}
    assert model, "no lima_jax.model package"
    outside = {f"{m} -> {t}" for m, targets in model.items() for t in targets
               if layer(t) > layer("lima_jax.model")}
    assert not outside, sorted(outside)


def test_there_are_no_import_cycles():
    graph, index, low, stack, cycles = imports(), {}, {}, [], []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_module_imports_a_command():
    into = sorted(f"{m} -> {t}" for m, targets in imports().items() for t in targets if t in commands()
                  and not (m.endswith(".__main__") and t == m.removesuffix(".__main__")))
    assert not into, into


def test_only_the_command_line_touches_flags():
    """A library takes arguments; absl flags are parsed by the command that runs it (a `cli.py` holds shared groups)."""
    touch = re.compile(r"^\s*(from absl import [^\n]*\bflags\b|import absl\.flags|from absl\.flags)", re.M)
    libraries = sorted(m for m, p in modules().items()
                       if m not in command_line() and touch.search(p.read_text()))
    assert not libraries, libraries


def _stem(name: str) -> str:
    for ending in ("ations", "ation", "ions", "ion", "ings", "ing", "ers", "er", "es", "s"):
        if name.endswith(ending) and len(name) - len(ending) >= 3:
            name = name[: -len(ending)]
            break
    return name.rstrip("e")


def test_no_two_sibling_modules_differ_only_by_an_ending():
    """`select` and `selection`, `judge` and `judging`: one noun, one module (or names a reader can tell apart)."""
    siblings: dict[tuple[Path, str], set[str]] = {}
    for path in PACKAGE.rglob("*"):
        if (path.suffix == ".py" and path.stem != "__init__" and path.stem != "__main__") or (path / "__init__.py").is_file():
            siblings.setdefault((path.parent, _stem(path.stem)), set()).add(path.stem)
    twins = sorted(f"{parent.relative_to(REPO)}: {', '.join(sorted(names))}"
                   for (parent, _), names in siblings.items() if len(names) > 1)
    assert not twins, twins
