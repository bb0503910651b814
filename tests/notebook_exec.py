"""Execute a notebook top to bottom with nbclient, as CI does; also a small command line.

    python tests/notebook_exec.py NOTEBOOK WORKDIR [--parameter NAME=VALUE ...] [--extra-cell CODE ...]

copies nothing: the kernel runs in WORKDIR (where the notebook's files appear) and the executed
notebook's text outputs are printed as JSON ``{"cells": [...], "errors": [...]}``. The test of the
Binder setup runs this file with a fresh virtual environment's interpreter.

Parameters follow papermill's convention: each notebook keeps the values a reader would use in
one cell tagged ``parameters``; CI's values go into a cell inserted right after it (tagged
``injected-parameters``), so the notebooks themselves carry no CI plumbing. The command line also
takes them from the environment variables CI sets (``AML_MAGICS_NOTEBOOK_TIMEOUT`` → ATTACH_TIMEOUT,
``AML_MAGICS_NOTEBOOK_BASE_IMAGE`` → BASE_IMAGE, ``AML_MAGICS_COMPUTE`` → COMPUTE).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
ENVIRONMENT = {"ATTACH_TIMEOUT": "AML_MAGICS_NOTEBOOK_TIMEOUT", "BASE_IMAGE": "AML_MAGICS_NOTEBOOK_BASE_IMAGE",
               "COMPUTE": "AML_MAGICS_COMPUTE"}


def inject_parameters(nb, parameters: dict[str, Any]):
    """A cell assigning ``parameters`` right after the notebook's ``parameters`` cell (papermill's way)."""
    if not parameters:
        return nb
    index = next((i for i, cell in enumerate(nb.cells) if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])),
                 None)
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters' to override")
    declared = _assigned(nb.cells[index].source)
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise ValueError(f"not parameters of this notebook: {', '.join(unknown)} (it has: {', '.join(sorted(declared))})")
    source = "# Injected parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(index + 1, cell)
    return nb


def _assigned(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def parameters_from_environment(nb) -> dict[str, Any]:
    """CI's values from its environment variables, for the parameters this notebook declares."""
    cell = next((c for c in nb.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
    declared = _assigned(cell.source) if cell is not None else set()
    found: dict[str, Any] = {}
    for name, variable in ENVIRONMENT.items():
        if name in declared and os.environ.get(variable):
            found[name] = _value(os.environ[variable])
    return found


def _value(text: str) -> Any:
    """``3`` → 3, ``True`` → True, anything else stays text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def execute(path: Path, workdir: Path, timeout: float = 180, extra_cells: tuple[str, ...] = (),
            parameters: dict[str, Any] | None = None):
    """The executed notebook (outputs filled in). Cell errors are kept as outputs, not raised."""
    nb = nbformat.read(path, as_version=4)
    inject_parameters(nb, parameters or {})
    for code in extra_cells:
        nb.cells.append(nbformat.v4.new_code_cell(code))
    client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except Exception as exc:  # a cell timed out, the kernel died: keep what ran, report it as an error
        nb.metadata["aml_magics_execution_error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    return nb


def cell_text(cell) -> str:
    """Everything a code cell printed or returned, as text (widget views by their text/plain)."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
        elif out["output_type"] == "error":
            parts.append(f"{out['ename']}: {out['evalue']}")
    return "".join(parts)


def error_outputs(nb) -> list[str]:
    """Every error output (exception) and every stderr traceback, with the cell's first line."""
    found = []
    if nb.metadata.get("aml_magics_execution_error"):
        found.append(nb.metadata["aml_magics_execution_error"])
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        head = cell.source.splitlines()[0] if cell.source else ""
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                found.append(f"[{head}] {out['ename']}: {out['evalue']}")
            elif out["output_type"] == "stream" and out["name"] == "stderr" and (
                    "Traceback" in out["text"] or "UsageError:" in out["text"]):  # a magic's one-line error
                found.append(f"[{head}] stderr: {out['text'][-500:]}")
    return found


def summary(nb) -> dict:
    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    return {
        "cells": [cell_text(cell) for cell in cells],
        "mimetypes": [sorted({k for out in cell.get("outputs", []) for k in out.get("data", {})}) for cell in cells],
        "errors": error_outputs(nb),
    }


def _parameter(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--parameter takes NAME=VALUE, not {text!r}")
    return name, _value(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("notebook", type=Path)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--parameter", action="append", type=_parameter, default=[])
    parser.add_argument("--extra-cell", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args(argv)
    parameters = parameters_from_environment(nbformat.read(args.notebook, as_version=4))
    parameters.update(dict(args.parameter))
    nb = execute(args.notebook, args.workdir, args.timeout, tuple(args.extra_cell), parameters)
    json.dump(summary(nb), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
