"""The package's shape: one folder per stage, each saying what it holds; no import hidden in a function to dodge a
cycle; no private name imported from another module. (The order of the stages, the absence of cycles and a light
recipe.common are .importlinter's contracts, checked by lint-imports in .ci/run.)"""

import ast

from conftest import REPO

PACKAGE = REPO / "recipe"
MODULES = sorted(PACKAGE.rglob("*.py"))
# The one module of the recipe imported late, and not to dodge a cycle: it imports transformers (seconds), so the
# options package loads it when DialogueTrainingArguments is first asked for, and --help and a refused command line
# never wait for it (recipe/config/parser.py).
LATE_FOR_SPEED = {("recipe/config/__init__.py", "training_arguments"),
                  ("recipe/config/parser.py", "training_arguments")}


def recipe_imports(tree: ast.AST):
    """The `from ... import` statements under `tree` that import from the recipe itself (relative or absolute)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == "recipe"):
            yield node


def test_every_package_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(REPO)} has no docstring"


def test_no_module_of_the_recipe_is_imported_inside_a_function():
    """Functions import heavy third-party libraries late (bitsandbytes, deepspeed, wandb, gguf); a module of the
    recipe imported there would only be dodging an import cycle, which the stage layers rule out."""
    found = []
    for path in MODULES:
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path.relative_to(REPO)}:{node.lineno}" for node in recipe_imports(function)
                          if (str(path.relative_to(REPO)), node.module) not in LATE_FOR_SPEED]
    assert not found, f"recipe modules imported inside functions: {found}"


def test_no_private_name_is_imported_from_another_module():
    found = [f"{path.relative_to(REPO)}:{node.lineno} {alias.name}"
             for path in MODULES for node in recipe_imports(ast.parse(path.read_text()))
             for alias in node.names if alias.name.startswith("_")]
    assert not found, f"private names imported across modules (make them public, or move them): {found}"
