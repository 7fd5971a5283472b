"""Fails when library code grows functions past 80 lines or imports the package inside a function.

    python scripts/check_structure.py [PATH ...]   (default: keras_vitbn)

A package-internal import inside a function is allowed only where it defers on purpose (a heavy
or optional dependency, or the backend chosen by a flag before Keras loads): the import line, or a
comment above its block of imports, says so with "deferred". Prints PATH:LINE: what and exits 1 on any hit.
"""

import ast
import os
import sys

MAX_LINES = 80
PACKAGE = "keras_vitbn"


def _internal(node):
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == PACKAGE
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names)


def _says_deferred(lines, node):
    """ "deferred" on the import itself, or in a comment above its block of imports."""
    if any("deferred" in line for line in lines[node.lineno - 1 : node.end_lineno]):
        return True
    for line in reversed(lines[: node.lineno - 1]):
        text = line.strip()
        if text.startswith("#") and "deferred" in text:
            return True
        if not text.startswith(("#", "from ", "import ")):
            return False
    return False


def check_file(path):
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    problems = []
    for node in ast.walk(ast.parse(source, path)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        if length > MAX_LINES:
            problems.append(f"{path}:{node.lineno}: {node.name} is {length} lines (at most {MAX_LINES})")
        for inner in ast.walk(node):
            if _internal(inner) and not _says_deferred(lines, inner):
                problems.append(
                    f"{path}:{inner.lineno}: package import inside {node.name}: move it to the top, "
                    'or say why it is deferred in a comment ("deferred: ...")'
                )
    return problems


def main(paths):
    problems = []
    for root in paths or [PACKAGE]:
        files = (
            [root]
            if root.endswith(".py")
            else sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".py"))
        )
        for path in files:
            problems.extend(check_file(path))
    print("\n".join(problems) or "structure: no long functions, no unexplained imports inside functions")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
