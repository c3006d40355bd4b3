"""The floors: trainer <- tasks.backends <- tasks <- flows <- deployments. A module imports only from its own floor
or those below it; trainer/ never imports Prefect or boto3, the backends never import Prefect. Every import is
read, including those inside functions and under TYPE_CHECKING."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS = ("trainer", "tasks.backends", "tasks", "flows", "deployments")  # bottom to top
NEVER = {"trainer": ("prefect", "boto3", "botocore"), "tasks.backends": ("prefect",)}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _floor(module: str) -> int | None:
    """The floor of the innermost package that holds `module` (tasks.backends.aws is on tasks.backends, not on
    tasks); None outside the project."""
    held = [floor for floor in FLOORS if module == floor or module.startswith(f"{floor}.")]
    return FLOORS.index(max(held, key=len)) if held else None


def _imports(path: Path) -> list[tuple[int, str]]:
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    imported = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            # each name as a module: `from tasks import backends` imports tasks.backends
            imported += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
    return imported


MODULES = sorted(path for package in ("trainer", "tasks", "flows", "deployments")
                 for path in (REPO / package).rglob("*.py"))


def _violations(path: Path) -> list[str]:
    """One line for each import statement that breaks a rule."""
    module = _module(path)
    own = FLOORS[_floor(module)]
    found = {}
    for line, name in _imports(path):
        floor = _floor(name)
        banned = any(name == never or name.startswith(f"{never}.") for never in NEVER.get(own, ()))
        if (floor is not None and floor > FLOORS.index(own)) or banned:
            where = f"({FLOORS[floor]})" if floor is not None else "(never here)"
            found.setdefault(line, f"{path.relative_to(REPO)}:{line}: {module} ({own}) imports {name} {where}")
    return list(found.values())


def test_every_floor_is_read():
    assert {_floor(_module(path)) for path in MODULES} == set(range(len(FLOORS)))


def test_nothing_imports_from_a_floor_above_it():
    violations = [found for path in MODULES for found in _violations(path)]
    assert not violations, "\n".join(violations)


REGISTRY = REPO / "tasks" / "backends" / "__init__.py"
BACKEND_NAMES = ("local", "aws")


def _name_checks(path: Path) -> list[str]:
    """Comparisons (==, !=, in, not in, match-case) against a backend's name."""
    def names(node: ast.AST) -> bool:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return any(isinstance(item, ast.Constant) and item.value in BACKEND_NAMES for item in items)

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare) and any(names(side) for side in (node.left, *node.comparators)):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.MatchValue) and names(node.value):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: case {ast.unparse(node.value)}")
    return found


def test_only_the_registry_compares_backend_names():
    """What differs per backend is a method of the backend (tasks/backends/base.py); the registry alone maps a name
    to its backend, so a new backend is one class and one registry line, and no stage asks which one it has."""
    checks = [found for path in MODULES if path != REGISTRY for found in _name_checks(path)]
    assert not checks, "\n".join(checks)
    assert _name_checks(REGISTRY), "the check reads the registry's own comparisons"
