"""The image's runtime requirements cover the code it runs, and agree with the development pins.

requirements.instance.txt is baked into the base image and never pip-installed after a deploy,
so a third-party import under app/ or workers/ that it does not provide is an instance that
crashes at boot. These tests read the code's imports with ast and map each import name to its
distribution with importlib.metadata, in the development environment where requirements.txt is
installed.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
INSTANCE_REQUIREMENTS = ROOT / "requirements.instance.txt"
DEV_REQUIREMENTS = ROOT / "requirements.txt"
SOURCE_DIRS = ("app", "kernel", "workers")
FIRST_PARTY = frozenset(SOURCE_DIRS)
# Run as programs by supervisord rather than imported, so the import scan cannot see them.
RUNTIME_PROGRAMS = ("supervisor", "uvicorn")


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    source: str  # "file:line", for messages

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)


def read_requirements(path: Path, _seen: frozenset[Path] = frozenset()) -> list[Pin]:
    """Every requirement in a pip requirements file, following -r/--requirement includes."""
    path = path.resolve()
    if path in _seen:
        raise AssertionError(f"{path.name}: circular -r include")
    pins: list[Pin] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, raw in enumerate(lines, start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        include = re.match(r"^(?:-r|--requirement)(?:\s+|=)(\S+)$", line)
        if include:
            pins += read_requirements(path.parent / include.group(1), _seen | {path})
            continue
        if line.startswith("-"):
            continue  # -c, --index-url, --hash continuation lines, ...: not requirements
        line = line.split(" --hash", 1)[0].rstrip(" \\")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise AssertionError(f"{path.name}:{number}: cannot parse {raw!r}: {exc}") from exc
        pins.append(Pin(requirement, f"{path.name}:{number}"))
    return pins


def includes(path: Path, target: Path) -> bool:
    """Whether a requirements file pulls in target through -r (directly or not)."""
    for raw in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*(?:-r|--requirement)(?:\s+|=)(\S+)", raw)
        if match:
            child = (path.parent / match.group(1)).resolve()
            if child == target.resolve() or (child.exists() and includes(child, target)):
                return True
    return False


def exact_version(pin: Pin) -> str | None:
    specifiers = list(pin.requirement.specifier)
    if len(specifiers) == 1 and specifiers[0].operator == "==" and "*" not in specifiers[0].version:
        return specifiers[0].version
    return None


def python_files(root: Path, dirs: Iterable[str]) -> Iterator[Path]:
    for name in dirs:
        directory = root / name
        if directory.is_dir():
            yield from sorted(directory.rglob("*.py"))


class _ImportCollector(ast.NodeVisitor):
    """Top-level names of absolute imports that run when the module is used.

    Skipped: relative imports, imports under `if TYPE_CHECKING:` (never executed), and imports
    in a `try` whose handlers catch ImportError (optional by construction).
    """

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.names.add(alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.names.add(node.module.split(".")[0])

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        optional = any(_catches_import_error(handler) for handler in node.handlers)
        visited: list[ast.AST] = [] if optional else [*node.body]
        visited += [*node.handlers, *node.orelse, *node.finalbody]
        for child in visited:
            self.visit(child)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught] if caught else []
    return any(
        isinstance(name, ast.Name) and name.id in {"ImportError", "ModuleNotFoundError"}
        for name in names
    )


def third_party_imports(files: Iterable[Path]) -> dict[str, list[str]]:
    """Import name -> files importing it, without stdlib, first-party and __future__."""
    found: dict[str, list[str]] = {}
    for path in files:
        collector = _ImportCollector()
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for name in collector.names:
            if name in sys.stdlib_module_names or name in FIRST_PARTY or name == "__future__":
                continue
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def dependency_closure(names: Iterable[str]) -> set[str]:
    """The named distributions plus everything they require (installed metadata, markers applied).

    A requirement's extras are not followed: `fastapi[standard]` in the requirements file is
    needed to make the extra's packages count.
    """
    closure: set[str] = set()
    pending = [canonicalize_name(name) for name in names]
    while pending:
        name = pending.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    return closure


def unsatisfied_imports(
    imports: dict[str, list[str]],
    allowed: set[str],
    distributions_by_module: Mapping[str, list[str]],
) -> list[str]:
    problems = []
    for module, where in sorted(imports.items()):
        distributions = {canonicalize_name(d) for d in distributions_by_module.get(module, [])}
        if not distributions:
            problems.append(f"{module} (imported in {where[0]}): no installed distribution")
        elif not distributions & allowed:
            problems.append(
                f"{module} (imported in {where[0]}): from {', '.join(sorted(distributions))}, "
                "which requirements.instance.txt does not provide"
            )
    return problems


@pytest.fixture(scope="module")
def instance_pins() -> list[Pin]:
    if not INSTANCE_REQUIREMENTS.is_file():
        pytest.fail("requirements.instance.txt is missing: the base image installs it")
    return read_requirements(INSTANCE_REQUIREMENTS)


def test_instance_requirements_are_exact_pins(instance_pins: list[Pin]) -> None:
    assert instance_pins, "requirements.instance.txt lists no requirement"
    loose = [f"{pin.source}: {pin.requirement}" for pin in instance_pins if not exact_version(pin)]
    assert not loose, f"pin these with == (the image must be reproducible): {loose}"
    names = [pin.name for pin in instance_pins]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    assert not duplicated, f"listed more than once: {duplicated}"


def test_instance_requirements_include_the_programs_supervisord_runs(
    instance_pins: list[Pin],
) -> None:
    names = {pin.name for pin in instance_pins}
    missing = [name for name in RUNTIME_PROGRAMS if name not in names]
    assert not missing, f"requirements.instance.txt must pin {missing}"


def test_instance_pins_agree_with_requirements_txt(instance_pins: list[Pin]) -> None:
    assert DEV_REQUIREMENTS.is_file(), "requirements.txt is missing"
    dev_pins = read_requirements(DEV_REQUIREMENTS)
    included = includes(DEV_REQUIREMENTS, INSTANCE_REQUIREMENTS)
    problems = []
    for pin in instance_pins:
        version = exact_version(pin)
        others = [dev for dev in dev_pins if dev.name == pin.name and dev.source != pin.source]
        if not included and not others:
            problems.append(f"{pin.name}=={version} is not in requirements.txt")
        for dev in others:
            if version is not None and not dev.requirement.specifier.contains(
                version, prereleases=True
            ):
                problems.append(
                    f"{pin.source} pins {pin.name}=={version}, {dev.source} "
                    f"asks for {dev.requirement.specifier}"
                )
    assert not problems, "; ".join(problems)


def test_third_party_imports_are_provided_by_instance_requirements(
    instance_pins: list[Pin],
) -> None:
    files = list(python_files(ROOT, SOURCE_DIRS))
    imports = third_party_imports(files)
    allowed = dependency_closure(pin.name for pin in instance_pins)
    problems = unsatisfied_imports(imports, allowed, metadata.packages_distributions())
    assert not problems, "\n".join(problems)


# The checker itself, on code written for the purpose, so that the test above cannot pass
# merely because it looks at nothing.


def test_checker_flags_an_import_missing_from_the_requirements(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        "from __future__ import annotations\n"
        "import json, os.path\n"
        "import pytest\n"
        "from app.core import config\n"
        "from . import sibling\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import mypy\n"
        "try:\n"
        "    import uvloop\n"
        "except ImportError:\n"
        "    uvloop = None\n"
        "def f() -> None:\n"
        "    import packaging.version\n",
        encoding="utf-8",
    )
    collector = _ImportCollector()
    collector.visit(ast.parse(module.read_text(encoding="utf-8")))
    assert collector.names == {"__future__", "json", "os", "pytest", "app", "typing", "packaging"}

    imports = {"pytest": ["sample.py"], "packaging": ["sample.py"], "nonexistent_mod": ["x.py"]}
    problems = unsatisfied_imports(
        imports, dependency_closure(["pytest"]), metadata.packages_distributions()
    )
    # packaging is required by pytest, so the closure provides it; the others are reported.
    assert len(problems) == 1 and problems[0].startswith("nonexistent_mod"), problems
    problems = unsatisfied_imports(
        {"pytest": ["sample.py"]},
        dependency_closure(["packaging"]),
        metadata.packages_distributions(),
    )
    assert problems and "pytest" in problems[0]


def test_requirements_parser_follows_includes_and_reads_pins(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("fastapi==0.1.0  # web\nuvicorn[standard]==0.2\n")
    (tmp_path / "dev.txt").write_text(
        "-r base.txt\n--index-url https://example.invalid\npytest>=8\n\n# comment\n"
    )
    pins = read_requirements(tmp_path / "dev.txt")
    assert [(pin.name, exact_version(pin)) for pin in pins] == [
        ("fastapi", "0.1.0"),
        ("uvicorn", "0.2"),
        ("pytest", None),
    ]
    assert includes(tmp_path / "dev.txt", tmp_path / "base.txt")
    assert not includes(tmp_path / "base.txt", tmp_path / "dev.txt")
