"""What an SDK v2 submission sends: a ``command()`` job, built offline.

The job runs ``python aml_magics_node/__main__.py <node options> -- <script> <args>`` in
``code`` = the same snapshot the v1 path builds (the bootstrap copied beside the user's
files, never into the user's folder), in an environment with debugpy added:

- no ``--environment``: an anonymous environment (content-hashed by the service, so an
  unchanged one is never rebuilt) from ``--base-image`` (default the Azure ML OpenMPI
  Ubuntu image) and a conda file with the kernel's Python, ``--pip``/``--requirements``
  and debugpy; ``--conda FILE`` replaces that conda file (debugpy is added to its pip list);
- ``--environment NAME[:VERSION]`` with a conda file: the same image and conda file,
  plus debugpy;
- ``--environment`` that is an image only (the curated ones): a Docker build context
  ``FROM`` that image that pip-installs debugpy into the image's own Python (a conda file
  on top would replace that Python and hide the image's packages);
- ``--environment`` built from its own Docker context: used as is; debugpy must be in it.

Distributed runs set ``resources.instance_count`` (``--nodes``) and a PyTorch or MPI
distribution with ``process_count_per_instance`` (``--procs-per-node``); every process
runs the same command and the bootstrap reads its rank from the launcher's environment.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import TargetError
from ...invocation import NODE_ENTRY, RunSecrets, entry_arguments, redact
from ...spec import RunSpec
from ..submission import (
    DEBUGPY_REQUIREMENT,
    RUN_ENV_VARS,
    check_snapshot,
    describe_debug,
    is_debugpy,
    make_snapshot,
    port_notes,
    requirement_lines,
    snapshot_files,
    snapshot_notes,
)

DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
VSCODE_SERVICE = "aml_magics_vscode"
SSH_SERVICE = "aml_magics_ssh"  # the proxy route's way onto the node (--connect auto|proxy)
ANONYMOUS_ENVIRONMENT = "CliV2AnonymousEnvironment"  # azure-ai-ml's name for an unnamed environment
DISTRIBUTIONS = ("pytorch", "mpi")
# azure-ai-ml prints "This is an experimental class" while serializing a job, and
# "Found the config file in: ..." from MLClient.from_config(), on handlers of its own.
_CHATTY_LOGGERS = ("azure.ai.ml._utils._experimental", "azure.ai.ml._ml_client")


@contextlib.contextmanager
def quiet_sdk() -> Iterator[None]:
    """Only azure-ai-ml's errors reach the cell while it builds or opens something."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# -- environment -----------------------------------------------------------------------


@dataclass
class EnvironmentPlan:
    """The job's environment (an azure-ai-ml Environment or a reference) and what it holds."""

    environment: Any
    kind: str  # inline | registered+conda | registered+docker | registered
    image: str | None = None
    conda_file: dict | None = None
    dockerfile: str | None = None
    registered: str | None = None
    build_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        pip = pip_list(self.conda_file) if self.conda_file else []
        if self.dockerfile:
            pip = dockerfile_packages(self.dockerfile)
        name = self.environment if isinstance(self.environment, str) else getattr(self.environment, "name", None)
        if name == ANONYMOUS_ENVIRONMENT:
            name = "anonymous (the service versions it by a hash of its content)"
        return {
            "name": name,
            "kind": self.kind,
            "registered": self.registered,
            "image": self.image,
            "base_image": self.image,
            "python": _python_version(self.conda_file) if self.conda_file else None,
            "pip_packages": [p for p in pip if not p.startswith("-")],
            "conda_packages": _conda_list(self.conda_file) if self.conda_file else [],
            "conda_file": self.conda_file,
            "dockerfile": self.dockerfile,
        }


def _default_conda() -> dict:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {"name": "aml-magics", "channels": ["conda-forge"], "dependencies": [f"python={python}", "pip", {"pip": []}]}


def _load_conda(text: str) -> dict:
    import yaml  # type: ignore[import-untyped]

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TargetError(f"--conda: not a conda environment file: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("dependencies", []), list):
        raise TargetError("--conda: not a conda environment file (expected a mapping with a dependencies list)")
    data.setdefault("dependencies", [])
    return data


def pip_list(conda: dict) -> list[str]:
    for dep in conda.get("dependencies") or []:
        if isinstance(dep, dict) and isinstance(dep.get("pip"), list):
            return [str(p) for p in dep["pip"]]
    return []


def _pip_section(conda: dict) -> list:
    """The conda file's pip list (created, with ``pip`` itself, when absent)."""
    deps = conda.setdefault("dependencies", [])
    for dep in deps:
        if isinstance(dep, dict) and "pip" in dep:
            if not isinstance(dep["pip"], list):
                dep["pip"] = []
            return dep["pip"]
    if not any(isinstance(d, str) and re.match(r"^pip\b", d) for d in deps):
        deps.append("pip")
    section: list = []
    deps.append({"pip": section})
    return section


def _conda_list(conda: dict) -> list[str]:
    return [str(d) for d in conda.get("dependencies") or [] if isinstance(d, str)]


def _python_version(conda: dict) -> str | None:
    for dep in _conda_list(conda):
        match = re.match(r"^python\s*[=<>~!]*\s*([0-9][0-9.*]*)", dep)
        if match:
            return match.group(1)
    return None


def _has_debugpy(conda: dict) -> bool:
    return any(is_debugpy(p) for p in pip_list(conda)) or any(is_debugpy(d) for d in _conda_list(conda))


def dockerfile_packages(text: str) -> list[str]:
    packages: list[str] = []
    for line in text.splitlines():
        if "pip install" in line:
            words = shlex.split(line.split("pip install", 1)[1])
            packages += [w for w in words if w != "--no-cache-dir"]
    return packages


def _user_packages(spec: RunSpec) -> tuple[list[str], list[str]]:
    env = spec.environment
    packages = list(env.pip)
    options: list[str] = []
    if env.requirements.strip():
        more, options = requirement_lines(env.requirements, env.requirements_path or "--requirements")
        packages += more
    return packages, options


def build_environment(spec: RunSpec, registered: Any = None, registered_name: str | None = None) -> EnvironmentPlan:
    """The job's environment with debugpy added (see the module's docstring)."""
    from azure.ai.ml.entities import BuildContext, Environment

    packages, pip_options = _user_packages(spec)
    debug = spec.debug.enabled
    wanted = packages + ([DEBUGPY_REQUIREMENT] if debug else [])
    env_spec = spec.environment
    if registered is None:
        conda = _load_conda(env_spec.conda) if env_spec.conda.strip() else _default_conda()
        section = _pip_section(conda)
        section.extend(pip_options)
        section.extend(packages)
        if debug and not _has_debugpy(conda):
            section.append(DEBUGPY_REQUIREMENT)
        image = env_spec.base_image or DEFAULT_IMAGE
        return EnvironmentPlan(Environment(image=image, conda_file=conda), "inline", image=image, conda_file=conda)

    label = registered_name or ":".join(filter(None, (registered.name, registered.version)))
    if env_spec.conda.strip():
        raise TargetError("--conda and --environment: give one (the registered environment brings its own conda file)")
    image = env_spec.base_image or registered.image
    if registered.conda_file:
        conda = copy.deepcopy(registered.conda_file)
        if isinstance(conda, str):
            conda = _load_conda(conda)
        if not packages and (not debug or _has_debugpy(conda)) and not env_spec.base_image:
            return EnvironmentPlan(registered, "registered", image=registered.image, conda_file=conda, registered=label)
        section = _pip_section(conda)
        section.extend(pip_options)
        section.extend(packages)
        if debug and not _has_debugpy(conda):
            section.append(DEBUGPY_REQUIREMENT)
        return EnvironmentPlan(Environment(image=image, conda_file=conda), "registered+conda", image=image,
                               conda_file=conda, registered=label,
                               notes=[f"environment {label}: its image and conda file, with debugpy added"])
    if image:
        if not wanted and not env_spec.base_image:
            return EnvironmentPlan(registered, "registered", image=image, registered=label)
        install = " ".join(shlex.quote(p) for p in [*pip_options, *wanted])
        dockerfile = f"FROM {image}\nRUN python -m pip install --no-cache-dir {install}\n"
        build_dir = Path(tempfile.mkdtemp(prefix="aml-magics-envbuild-"))
        (build_dir / "Dockerfile").write_text(dockerfile)
        return EnvironmentPlan(Environment(build=BuildContext(path=str(build_dir))), "registered+docker", image=image,
                               dockerfile=dockerfile, registered=label, build_dir=build_dir,
                               notes=[f"environment {label} is an image: a Docker build FROM it pip-installs "
                                      f"{', '.join(wanted)} into its own Python"])
    if packages:
        raise TargetError(f"environment {label} is built from its own Docker context; --pip/--requirements cannot "
                          "be added to it")
    notes = [f"environment {label} is built from its own Docker context: debugpy must already be installed in it"] \
        if debug else []
    return EnvironmentPlan(registered, "registered", registered=label, notes=notes)


# -- the job ---------------------------------------------------------------------------


def job_command(spec: RunSpec, bind: str, port: int) -> str:
    """``python aml_magics_node/__main__.py <node options> -- <script> <args>``, shell-quoted."""
    arguments = entry_arguments(spec, bind, port)
    bad = next((a for a in arguments if "${{" in a), None)
    if bad is not None:
        raise TargetError(f"argument {bad!r} contains '${{{{', which Azure ML reads as an input/output binding")
    return " ".join(["python", NODE_ENTRY, *(shlex.quote(str(a)) for a in arguments)])


def build_distribution(kind: str | None, procs_per_node: int) -> Any:
    from azure.ai.ml import MpiDistribution, PyTorchDistribution

    kind = kind or "pytorch"
    if kind not in DISTRIBUTIONS:
        raise TargetError(f"--distribution {kind!r}: expected pytorch or mpi")
    cls = MpiDistribution if kind == "mpi" else PyTorchDistribution
    return cls(process_count_per_instance=procs_per_node)


@dataclass
class JobSubmission:
    """Everything one ``command()`` job submission sends, built offline."""

    spec: RunSpec
    snapshot: Path
    job: Any  # azure.ai.ml.entities.Command
    environment: EnvironmentPlan
    compute: str
    experiment: str
    bind: str
    port: int
    vscode_service: bool = False
    notes: list[str] = field(default_factory=list)
    ssh_public_key: str | None = None

    @property
    def arguments(self) -> list[str]:
        return entry_arguments(self.spec, self.bind, self.port)

    def cleanup(self) -> None:
        shutil.rmtree(self.snapshot, ignore_errors=True)
        if self.environment.build_dir is not None:
            shutil.rmtree(self.environment.build_dir, ignore_errors=True)

    def job_dict(self) -> dict:
        """The job as azure-ai-ml serializes it (what ``az ml job create -f`` would take)."""
        with quiet_sdk():
            data = json.loads(json.dumps(self.job._to_dict(), default=str))
        data.setdefault("experiment_name", self.experiment)
        return data

    def job_yaml(self) -> str:
        import yaml  # type: ignore[import-untyped]

        return yaml.safe_dump(self.job_dict(), sort_keys=False, default_flow_style=False)

    def describe(self) -> dict:
        job = self.job
        distribution = None
        if job.distribution is not None:
            distribution = {"type": type(job.distribution).__name__,
                            "instance_count": job.resources.instance_count if job.resources else 1,
                            "process_count_per_instance": job.distribution.process_count_per_instance}
        return {
            "sdk": "v2",
            "compute": self.compute,
            "experiment": self.experiment,
            "source_dir": str(self.spec.source_dir),
            "snapshot_files": snapshot_files(self.snapshot),
            "entry_script": NODE_ENTRY,
            "arguments": self.arguments,
            "command": job.command,
            "user_script": self.spec.script,
            "user_arguments": list(self.spec.args),
            "environment": self.environment.describe(),
            "environment_variables": redact(dict(job.environment_variables or {})),
            "distributed": distribution,
            "services": {name: service.type for name, service in (job.services or {}).items()},
            "ssh_service": ({"name": SSH_SERVICE, "user": "azureuser", "nodes": "all" if self.spec.distributed.nodes > 1
                             else "node 0", "ssh_public_keys": self.ssh_public_key,
                             "note": "a key pair made for this run; its private half never leaves this process"}
                            if self.ssh_public_key else None),
            "debug": describe_debug(self.spec, self.bind, self.port),
            "notes": list(self.notes),
            "job": self.job_dict(),
            "job_yaml": self.job_yaml(),
        }


def build_job(spec: RunSpec, compute: str, experiment: str, *, registered: Any = None,
              registered_name: str | None = None, script_text: str | None = None, vscode_service: bool = False,
              distribution: str | None = None, tags: dict[str, str] | None = None,
              secrets: RunSecrets | None = None, ssh_public_key: str | None = None) -> JobSubmission:
    """Snapshot + Environment + ``command()`` job for ``spec``; nothing is contacted (``secrets``
    travel in the job's environment variables; a dry run has none). ``ssh_public_key``: the job
    carries an SSH service that lets that key in (every node), the proxy route's way in."""
    from azure.ai.ml import command
    from azure.ai.ml.entities import SshJobService, VsCodeJobService

    bind = spec.debug.bind or "node"
    port = spec.debug.port
    if distribution not in (None, *DISTRIBUTIONS):
        raise TargetError(f"--distribution {distribution!r}: expected pytorch or mpi")
    cmd = job_command(spec, bind, port)
    plan = build_environment(spec, registered, registered_name)
    notes = list(plan.notes) + port_notes(spec, port)
    dist = spec.distributed
    try:
        snapshot = make_snapshot(spec.source_dir, spec.script, script_text)
    except BaseException:
        if plan.build_dir is not None:
            shutil.rmtree(plan.build_dir, ignore_errors=True)
        raise
    submission = JobSubmission(spec, snapshot, None, plan, compute, experiment, bind, port, vscode_service, notes,
                               ssh_public_key)
    try:
        check_snapshot(spec, snapshot, script_text)
        notes += snapshot_notes(snapshot)
        options: dict[str, Any] = {}
        if dist.world_size > 1:
            options["instance_count"] = dist.nodes
            options["distribution"] = build_distribution(distribution, dist.procs_per_node)
        elif distribution == "mpi":
            notes.append("--distribution mpi with one process: submitted without a distribution")
        services: dict[str, Any] = {}
        if vscode_service:
            services[VSCODE_SERVICE] = VsCodeJobService(nodes="all") if dist.nodes > 1 else VsCodeJobService()
        if ssh_public_key:
            services[SSH_SERVICE] = SshJobService(ssh_public_keys=ssh_public_key,
                                                  nodes="all" if dist.nodes > 1 else None)
        if services:
            options["services"] = services
        with quiet_sdk():
            submission.job = command(
                code=str(snapshot), command=cmd, environment=plan.environment, compute=compute,
                experiment_name=experiment, display_name=spec.name,
                description=f"aml_magics debug run of {spec.script}",
                environment_variables={**RUN_ENV_VARS, **dict(spec.environment.env_vars),
                                       **(secrets.environment() if secrets is not None else {})},
                tags=dict(tags or {}), **options)
    except BaseException:
        submission.cleanup()
        raise
    return submission
