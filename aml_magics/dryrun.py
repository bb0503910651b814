"""``--dry-run``: build what a run would submit and show it, without starting anything.

Targets that submit somewhere (azureml) say so in their capabilities (``dry_run``) and implement
``plan(spec, cell=None) -> dict``; nothing is contacted, no cell is written into the user's folder.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import OptionsError, TargetError
from .invocation import redact_credentials
from .options import RunRequest, check_syntax
from .targets import all_targets, make_target, target_info


class Plan(dict):
    """The plan as a dict (JSON-able), shown as readable text in IPython."""

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(format_text(self))


def plan(request: RunRequest) -> Plan:
    try:
        if not target_info(request.target).capabilities.dry_run:
            able = " or ".join(f"--target {i.name}" for i in all_targets() if i.capabilities.dry_run)
            raise OptionsError(f"--dry-run: target '{request.target}' submits nothing ahead that could be shown"
                               + (f"; it is for {able}" if able else ""))
        target: Any = make_target(request.target, **request.target_options)  # dry_run: it has plan()
        if request.cell is not None and request.cell_file is not None:
            check_syntax(request.cell, str(request.cell_file))
        return Plan(_redacted(target.plan(request.spec, cell=request.cell)))
    except TargetError as exc:
        raise OptionsError(str(exc)) from None


def _redacted(value: Any) -> Any:
    """The plan as shown: credentials in a URL (a --pip index, a requirement) hidden."""
    if isinstance(value, str):
        return redact_credentials(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def format_text(data: dict) -> str:
    env = data.get("environment") or {}
    workspace = data.get("workspace") or {}
    lines = [
        f"dry run ({data.get('backend', data.get('target'))}): nothing was submitted",
        f"workspace:    {workspace.get('workspace_name')} (resource group {workspace.get('resource_group')}, "
        f"subscription {workspace.get('subscription_id') or 'found at submit'}; {workspace.get('found_by')})",
        f"compute:      {data.get('compute')}",
        f"experiment:   {data.get('experiment')}",
        f"entry script: {data.get('entry_script')}",
        f"arguments:    {json.dumps(data.get('arguments'))}",
        f"command:      {data.get('command')}",
        f"environment:  {env.get('name')}" + (f" (from {env['registered']})" if env.get("registered") else ""),
        f"  python:         {env.get('python')}",
        f"  pip packages:   {', '.join(env.get('pip_packages') or []) or '-'}",
        f"  conda packages: {', '.join(env.get('conda_packages') or []) or '-'}",
        f"  base image:     {env.get('base_image')}",
        f"env vars:     {json.dumps(data.get('environment_variables'))}",
        f"snapshot:     {data.get('source_dir')} → {len(data.get('snapshot_files') or [])} file(s): "
        + ", ".join((data.get("snapshot_files") or [])[:12])
        + (" …" if len(data.get("snapshot_files") or []) > 12 else ""),
    ]
    if data.get("distributed"):
        lines.append(f"distributed:  {json.dumps(data['distributed'])}")
    for note in data.get("notes") or []:
        lines.append(f"note: {note}")
    if data.get("job_yaml"):  # SDK v2: the command() job as azure-ai-ml serializes it
        lines.append("job (YAML, as azure-ai-ml would submit it):")
        lines.extend("  " + line for line in data["job_yaml"].rstrip().splitlines())
    return "\n".join(lines)
