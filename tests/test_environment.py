"""What the pipeline needs of its environment is said, not assumed: every third-party package the code imports is
declared in pyproject.toml, and a system it cannot run on is refused in one line."""

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO
from pipeline.core.errors import PipelineError
from pipeline.core.stage import check_platform


def _imported_top_level() -> set[str]:
    found = set()
    for path in (REPO / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"pipeline"}


def test_every_imported_package_is_declared_in_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    distributions = packages_distributions()
    imported = _imported_top_level()
    assert {"scipy", "safetensors", "requests", "scmrepo", "torch"} <= imported
    missing = {module: distributions.get(module) for module in imported
               if not {canonicalize_name(d) for d in distributions.get(module, [module])} & declared}
    assert not missing, f"imported but not declared in pyproject.toml's dependencies: {missing}"


def test_windows_is_refused_in_one_line_naming_what_to_do():
    with pytest.raises(PipelineError) as e:
        check_platform("win32")
    message = str(e.value)
    assert "\n" not in message and "Windows is not supported" in message and "'win32'" in message
    assert "os.preadv" in message and "WSL" in message


def test_a_system_without_preadv_is_refused_and_linux_and_macos_11_pass():
    check_platform("linux", preadv=True)
    check_platform("darwin", preadv=True)  # macOS 11+: os.preadv exists, forkserver works (untested here)
    with pytest.raises(PipelineError, match=r"no os\.preadv \(sys\.platform 'darwin'\).*macOS 11 or later"):
        check_platform("darwin", preadv=False)
    check_platform()  # the system running the tests
