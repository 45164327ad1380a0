"""Every open, list, stat, rename and delete of a file goes through rewrite/storage.py (the seam; remote
stores sit behind it in rewrite/remote.py). Read from the code with `ast`, so a new `open(` or `path.exists()`
elsewhere fails here, naming the file and line."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rewrite"
SEAM = {PACKAGE / "storage.py", PACKAGE / "remote.py"}
NOT_DATA = {PACKAGE / "children.py"}  # reads /proc to find a process's children: no file of the user's
ALLOWED = {  # (module, call): why it is no file the tool reads or writes for the user
    ("rewrite/engines/vllm.py", ".read_text()"): "/proc/cpuinfo: what the machine's CPU can do",
    ("rewrite/resources.py", ".iterdir()"): "the package's own files, through importlib.resources",
}
NOT_FILES = {"storage", "tarfile", "atomic", "Image"}  # their open/write_text take no path of ours or go through the seam

PATH_METHODS = {"open", "unlink", "rename", "iterdir", "glob", "rglob", "mkdir", "rmdir", "exists", "is_file",
                "is_dir", "stat", "lstat", "read_text", "write_text", "read_bytes", "write_bytes", "touch"}
MODULE_CALLS = {
    "os": {"open", "replace", "rename", "remove", "unlink", "listdir", "scandir", "stat", "lstat", "makedirs",
           "mkdir", "rmdir", "walk", "link", "access"},
    "os.path": {"exists", "lexists", "isfile", "isdir", "getsize", "getmtime"},
    "shutil": {"rmtree", "copy", "copy2", "copyfile", "copytree", "move"},
    "glob": {"glob", "iglob"},
    "pa": {"OSFile", "memory_map", "input_stream", "output_stream"},
    "pacsv": {"open_csv", "read_csv", "write_csv"},
    "pq": {"ParquetFile", "read_table", "read_schema", "read_metadata", "write_table", "ParquetWriter"},
}


def _through_seam(call: ast.Call) -> bool:
    """A reader given a file the seam opened: `pacsv.open_csv(storage.arrow_file(path))`."""
    first = call.args[0] if call.args else None
    return (isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute)
            and isinstance(first.func.value, ast.Name) and first.func.value.id == "storage")


def file_calls(source: str) -> list[tuple[int, str]]:
    """The calls in `source` that touch a file without going through the seam: (line, what)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "open":
            found.append((node.lineno, "open()"))
        elif isinstance(f, ast.Attribute):
            owner = ast.unparse(f.value) if isinstance(f.value, (ast.Name, ast.Attribute)) else None
            if owner in MODULE_CALLS:
                if f.attr in MODULE_CALLS[owner] and not _through_seam(node):
                    found.append((node.lineno, f"{owner}.{f.attr}()"))
            elif owner == "tarfile" and f.attr == "open":
                if not any(k.arg == "fileobj" for k in node.keywords):
                    found.append((node.lineno, "tarfile.open(name)"))
            elif f.attr in PATH_METHODS and owner not in NOT_FILES:
                found.append((node.lineno, f".{f.attr}()"))
    return found


def test_every_file_call_goes_through_the_seam():
    stray = [f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
             for path in sorted(PACKAGE.rglob("*.py")) if path not in SEAM and path not in NOT_DATA
             for line, what in file_calls(path.read_text())
             if (str(path.relative_to(PACKAGE.parent)), what) not in ALLOWED]
    assert not stray, "file calls outside rewrite/storage.py:\n" + "\n".join(stray)


def test_the_check_finds_what_it_looks_for():
    sample = ("import os, shutil, tarfile\nfrom pathlib import Path\n"
              "open('a')\nPath('b').exists()\nos.replace('a', 'b')\nshutil.rmtree('c')\n"
              "os.path.isdir('d')\ntarfile.open('e')\ntarfile.open(fileobj=f)\nstorage.exists('f')\nglob.glob('g')\n"
              "atomic.write_text('h', 'x')\npacsv.open_csv(storage.arrow_file('i'))\npacsv.open_csv('j')\n")
    assert [what for _, what in file_calls(sample)] == [
        "open()", ".exists()", "os.replace()", "shutil.rmtree()", "os.path.isdir()", "tarfile.open(name)", "glob.glob()", "pacsv.open_csv()"]
