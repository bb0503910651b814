"""Execute a notebook top to bottom with nbclient, as CI does; also a small command line.

    python tests/notebook_exec.py NOTEBOOK WORKDIR [--extra-cell CODE ...]

copies nothing: the kernel runs in WORKDIR (where the notebook's files appear) and the executed
notebook's text outputs are printed as JSON ``{"cells": [...], "errors": [...]}``. The test of the
Binder setup runs this file with a fresh virtual environment's interpreter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, workdir: Path, timeout: float = 180, extra_cells: tuple[str, ...] = ()):
    """The executed notebook (outputs filled in). Cell errors are kept as outputs, not raised."""
    nb = nbformat.read(path, as_version=4)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("notebook", type=Path)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--extra-cell", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args(argv)
    nb = execute(args.notebook, args.workdir, args.timeout, tuple(args.extra_cell))
    json.dump(summary(nb), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
