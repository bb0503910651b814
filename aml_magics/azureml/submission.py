"""What is submitted: a snapshot, an Environment with debugpy, a ScriptRunConfig.

Built with azureml-core's real classes and without contacting the service, so a
``--dry-run`` shows exactly what a submission would send and tests can assert it.
The user's script is never edited: the bootstrap is the entry script, copied into a
snapshot directory (never into the user's own folder), and the user's script and its
arguments follow ``--`` untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TargetError
from ..invocation import NODE_ENTRY, NODE_FOLDER, RUN_ENV, RunSecrets, copy_node, entry_arguments, redact
from ..spec import RunSpec

DEBUGPY_REQUIREMENT = "debugpy>=1.8.1"  # listen(..., in_process_debug_adapter=True)
# Azure ML's snapshot limits (azureml-core's SNAPSHOT_MAX_SIZE_BYTES and SNAPSHOT_MAX_FILES; the file
# limit is lifted by AML_SNAPSHOT_NO_FILE_LIMIT): SDK v1 refuses beyond them, v2 uploads slowly.
SNAPSHOT_LIMIT = 300 * 1024 * 1024
SNAPSHOT_MAX_FILES = 2000
UPLOAD_LINE_BYTES = 5 * 1024 * 1024  # above this, the upload gets a line of its own
# Never uploaded: version control, caches, the workspace's own settings (.azureml/ holds its
# config.json) and our own cell/cache folder.
ALWAYS_IGNORED = {".git", "__pycache__", ".ipynb_checkpoints", ".aml_magics_snapshot", ".azureml", ".aml_magics"}
RUN_ENV_VARS = RUN_ENV
_REQ_UNSUPPORTED = re.compile(r"^(-r|--requirement|-c|--constraint|-e|--editable)\b")


# -- snapshot --------------------------------------------------------------------------


def _ignore_spec(source_dir: Path) -> Any:
    """The .amlignore (else .gitignore) rules Azure ML applies to a snapshot."""
    for name in (".amlignore", ".gitignore"):
        path = source_dir / name
        if path.is_file():
            try:
                import pathspec

                return pathspec.PathSpec.from_lines("gitwildmatch", path.read_text(errors="replace").splitlines())
            except ImportError:
                return None
    return None


def make_snapshot(source_dir: Path, script: str | None = None, script_text: str | None = None,
                  dest: Path | None = None) -> Path:
    """A fresh directory holding the source dir's files plus the bootstrap.

    ``script_text`` (a cell not yet written anywhere) lands at ``script`` in the snapshot.
    Raises TargetError beyond Azure ML's 300 MB snapshot limit.
    """
    dest = dest or Path(tempfile.mkdtemp(prefix="aml-magics-snapshot-"))
    total = 0
    try:
        if source_dir.is_dir():
            spec = _ignore_spec(source_dir)
            for root, dirs, files in os.walk(source_dir):
                rel_root = Path(root).relative_to(source_dir)
                dirs[:] = sorted(d for d in dirs if d not in ALWAYS_IGNORED
                                 and not (spec and spec.match_file(f"{(rel_root / d).as_posix()}/")))
                for name in sorted(files):
                    rel = rel_root / name
                    if spec and spec.match_file(rel.as_posix()):
                        continue
                    src = Path(root) / name
                    if not src.is_file() or is_workspace_config(src):
                        continue
                    total += src.stat().st_size
                    if total > SNAPSHOT_LIMIT:
                        raise TargetError(f"source dir {source_dir} is over Azure ML's 300 MB snapshot limit; "
                                          "leave data out with an .amlignore file")
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
        elif script_text is None:
            raise TargetError(f"source dir not found: {source_dir}")
        if script_text is not None and script:
            target = dest / script
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(script_text if script_text.endswith("\n") else script_text + "\n")
        copy_node(dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def is_workspace_config(path: Path) -> bool:
    """A workspace's config.json (it names a workspace and a subscription): never uploaded."""
    if path.name != "config.json" or path.stat().st_size > 64 * 1024:
        return False
    try:
        data = json.loads(path.read_text(errors="replace"))
    except ValueError:
        return False
    return isinstance(data, dict) and "workspace_name" in data and "subscription_id" in data


def snapshot_notes(snapshot: Path) -> list[str]:
    """What a user should know about a snapshot before it is uploaded: above Azure ML's file
    limit, or big enough that the upload takes a while (a line of our own, not the SDK's bar)."""
    files = [p for p in snapshot.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    notes = []
    if len(files) > SNAPSHOT_MAX_FILES and not os.environ.get("AML_SNAPSHOT_NO_FILE_LIMIT"):
        notes.append(f"WARNING the snapshot has {len(files)} files, above Azure ML's limit of {SNAPSHOT_MAX_FILES} "
                     "(SDK v1 refuses it): leave data out with an .amlignore file")
    if size > UPLOAD_LINE_BYTES:
        notes.append(f"uploading the snapshot: {size / 1024 / 1024:.1f} MB in {len(files)} files")
    return notes


def snapshot_files(snapshot: Path) -> list[str]:
    """The snapshot's files as shown in a dry run; the node package is one entry (``aml_magics_node/``)."""
    names = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    return sorted({f"{NODE_FOLDER}/" if name.startswith(f"{NODE_FOLDER}/") else name for name in names})


# -- environment -----------------------------------------------------------------------


def requirement_lines(text: str, origin: str) -> tuple[list[str], list[str]]:
    """Packages and pip options of a requirements text; unsupported lines are errors."""
    packages: list[str] = []
    options: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if _REQ_UNSUPPORTED.match(line):
            raise TargetError(f"{origin} line {number}: {line!r} cannot be used on Azure ML (the file is not "
                              "uploaded with the environment); list the packages themselves")
        (options if line.startswith("-") else packages).append(line)
    return packages, options


def is_debugpy(requirement: str) -> bool:
    return re.match(r"^debugpy\b", requirement.strip(), re.IGNORECASE) is not None


def add_debugpy(environment: Any) -> bool:
    """Put debugpy into an Environment's pip packages; False when it cannot (user-managed)."""
    python = environment.python
    if python.user_managed_dependencies:
        return False
    deps = python.conda_dependencies
    if not any(is_debugpy(p) for p in deps.pip_packages):
        deps.add_pip_package(DEBUGPY_REQUIREMENT)
        python.conda_dependencies = deps
    return True


def build_environment(spec: RunSpec, registered: Any = None) -> tuple[Any, list[str]]:
    """The run's Environment with debugpy added, and notes for the user.

    ``registered``: an existing (possibly curated) Environment, cloned so the original is
    never changed; otherwise a new one from the run's pip/requirements/conda declarations.
    """
    from azureml.core import Environment
    from azureml.core.conda_dependencies import CondaDependencies

    notes: list[str] = []
    env_spec = spec.environment
    if registered is not None:
        environment = registered.clone(f"{registered.name}-aml-magics-debug")
    else:
        environment = Environment(f"aml-magics-{_env_name(spec.name)}")
        if env_spec.conda.strip():
            with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
                handle.write(env_spec.conda)
            try:
                deps = CondaDependencies(conda_dependencies_file_path=handle.name)
            except Exception as exc:
                raise TargetError(f"--conda: not a conda environment file Azure ML can read: {exc}") from None
            finally:
                os.unlink(handle.name)
        else:
            deps = CondaDependencies.create(python_version=f"{sys.version_info.major}.{sys.version_info.minor}")
        environment.python.conda_dependencies = deps
    deps = environment.python.conda_dependencies
    packages = list(env_spec.pip)
    if env_spec.requirements.strip():
        more, options = requirement_lines(env_spec.requirements, env_spec.requirements_path or "--requirements")
        packages += more
        for option in options:
            deps.set_pip_option(option)
    if packages and environment.python.user_managed_dependencies:
        raise TargetError(f"environment {environment.name} manages its own dependencies; "
                          "--pip/--requirements cannot be added to it")
    for package in packages:
        deps.add_pip_package(package)
    environment.python.conda_dependencies = deps
    if env_spec.base_image:
        environment.docker.base_image = env_spec.base_image
        environment.docker.base_dockerfile = None
    if spec.debug.enabled and not add_debugpy(environment):
        notes.append(f"environment {environment.name} manages its own dependencies: debugpy must already be "
                     "installed in its image")
    return environment, notes


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:200] or "run"


def pip_packages(environment: Any) -> list[str]:
    return list(environment.python.conda_dependencies.pip_packages)


def conda_packages(environment: Any) -> list[str]:
    return list(environment.python.conda_dependencies.conda_packages)


# -- the run ---------------------------------------------------------------------------


def port_notes(spec: RunSpec, port: int) -> list[str]:
    """A remote run's note on its port: none. ``--port auto`` (the default) travels to the node's
    bootstrap (``--port-auto``), which takes ``port`` or the next free one there and reports it."""
    return []


def check_snapshot(spec: RunSpec, snapshot: Path, script_text: str | None) -> None:
    """The user's script must be in the snapshot (unless it is a cell, written there by us)."""
    if script_text is None and not (snapshot / spec.script).is_file():
        raise TargetError(f"script {spec.script} is not in the snapshot of {spec.source_dir} "
                          "(excluded by .amlignore/.gitignore?)")


def describe_debug(spec: RunSpec, bind: str, port: int) -> dict:
    """The ``debug`` part of a dry run's description."""
    return {
        "enabled": spec.debug.enabled,
        "bind": bind,
        "port": port,
        "timeout": spec.debug.timeout,
        "stop_on_entry": spec.debug.stop_on_entry,
    }


@dataclass
class Submission:
    """Everything one ScriptRunConfig submission sends, built offline."""

    spec: RunSpec
    snapshot: Path
    config: Any  # azureml.core.ScriptRunConfig
    environment: Any
    compute: str
    experiment: str
    bind: str
    port: int
    registered_environment: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def arguments(self) -> list[str]:
        return [str(a) for a in self.config.arguments]

    def cleanup(self) -> None:
        shutil.rmtree(self.snapshot, ignore_errors=True)

    def describe(self) -> dict:
        env = self.environment
        distributed = distribution(self.config.run_config)
        return {
            "compute": self.compute,
            "experiment": self.experiment,
            "source_dir": str(self.spec.source_dir),
            "snapshot_files": snapshot_files(self.snapshot),
            "entry_script": self.config.script,
            "arguments": self.arguments,
            "command": " ".join(["python", self.config.script, *map(_quote, self.arguments)]),
            "user_script": self.spec.script,
            "user_arguments": list(self.spec.args),
            "environment": {
                "name": env.name,
                "registered": self.registered_environment,
                "pip_packages": pip_packages(env),
                "conda_packages": conda_packages(env),
                "python": env.python.conda_dependencies.get_python_version(),
                "user_managed_dependencies": bool(env.python.user_managed_dependencies),
                "base_image": env.docker.base_image,
            },
            "environment_variables": redact(dict(self.config.run_config.environment_variables or {})),
            "distributed": distributed,
            "debug": describe_debug(self.spec, self.bind, self.port),
            "notes": list(self.notes),
        }


MPI_COMMUNICATORS = ("IntelMpi", "Mpi", "OpenMpi")  # what an MpiConfiguration sets (azureml-core: IntelMpi)


def distribution(run_config: Any) -> dict | None:
    """A run configuration's distributed settings (PyTorch launcher or mpirun), None for one process."""
    if run_config.framework == "PyTorch":
        return {"type": "PyTorchConfiguration", "node_count": run_config.node_count,
                "process_count": run_config.pytorch.process_count}
    if run_config.communicator in MPI_COMMUNICATORS:
        return {"type": "MpiConfiguration", "node_count": run_config.node_count,
                "process_count_per_node": run_config.mpi.process_count_per_node}
    return None


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def build_submission(spec: RunSpec, compute: str, experiment: str, *, registered: Any = None,
                     registered_name: str | None = None, script_text: str | None = None,
                     secrets: RunSecrets | None = None) -> Submission:
    """Snapshot + Environment + ScriptRunConfig for ``spec``; nothing is contacted.

    ``secrets`` travel in the run's environment variables (the only channel to a node);
    a dry run builds without them and shows none."""
    from azureml.core import ScriptRunConfig

    bind = spec.debug.bind or "node"
    port = spec.debug.port
    environment, notes = build_environment(spec, registered)
    notes += port_notes(spec, port)
    snapshot = make_snapshot(spec.source_dir, spec.script, script_text)
    try:
        check_snapshot(spec, snapshot, script_text)
        notes += snapshot_notes(snapshot)
        distributed = getattr(spec, "distributed", None)
        job_config = None
        if distributed is not None and distributed.world_size > 1:
            from azureml.core.runconfig import PyTorchConfiguration

            job_config = PyTorchConfiguration(process_count=distributed.world_size, node_count=distributed.nodes)
        config = ScriptRunConfig(source_directory=str(snapshot), script=NODE_ENTRY,
                                 arguments=entry_arguments(spec, bind, port), compute_target=compute,
                                 environment=environment, distributed_job_config=job_config)
        config.run_config.environment_variables = {**RUN_ENV_VARS, **dict(spec.environment.env_vars),
                                                   **(secrets.environment() if secrets is not None else {})}
    except BaseException:
        shutil.rmtree(snapshot, ignore_errors=True)
        raise
    return Submission(spec, snapshot, config, environment, compute, experiment, bind, port,
                      registered_environment=registered_name, notes=notes)
