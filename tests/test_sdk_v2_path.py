"""The real SDK v2 path as a user sees it (issue 20): only the project's own lines, a snapshot
that leaves the workspace's settings at home, and the simulator without a workspace config.

The submission goes through a real ``MLClient`` (azure-ai-ml builds and validates the job as it
would for the service); the credential fails before any request, and any connection attempt
fails the test, so nothing leaves this machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is not installed (pip install 'aml-magics[azureml-v2]')")

from azureml_support import WORKSPACE, use_simulator, write_project, write_workspace_config  # noqa: E402

from aml_magics import cli  # noqa: E402
from aml_magics.azureml import settings  # noqa: E402
from aml_magics.azureml.submission import (  # noqa: E402
    SNAPSHOT_MAX_FILES,
    UPLOAD_LINE_BYTES,
    make_snapshot,
    snapshot_files,
    snapshot_notes,
)
from aml_magics.errors import TargetError  # noqa: E402
from aml_magics.invocation import NODE_FOLDER  # noqa: E402

EXPERIMENTAL = "This is an experimental class"


# A submission in a fresh interpreter (azure-ai-ml says each experimental class once per process,
# and caches its schemas): "ours" goes through MLClientBackend.create_job, "sdk" calls the SDK bare.
SUBMIT = """
import json, socket, sys
from pathlib import Path

def refuse(self, address):
    raise AssertionError(f"network contacted: {address}")

socket.socket.connect = refuse
from aml_magics.azureml import settings
from aml_magics.azureml.v2.job import build_job
from aml_magics.azureml.v2.service import MLClientBackend
from aml_magics.spec import RunSpec

class NoCredential:
    def get_token(self, *scopes, **kwargs):
        from azure.identity import CredentialUnavailableError
        raise CredentialUnavailableError("no credential in this test")
    def get_token_info(self, *scopes, **kwargs):
        return self.get_token()

folder = Path(sys.argv[2])
backend = MLClientBackend()
backend.credential = NoCredential
client = backend.open_workspace(settings.locate_workspace(None, folder))
print("show_progress", client._operation_config.show_progress)
submission = build_job(RunSpec(name="train", source_dir=folder / "proj", script="train.py"), "cpu", "exp")
try:
    if sys.argv[1] == "ours":
        backend.create_job(client, submission.job, "exp")
    else:
        client.jobs.create_or_update(submission.job, experiment_name="exp")
except Exception as exc:
    print("ended:", type(exc).__name__, exc)
finally:
    submission.cleanup()
"""


def _submit(how: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SUBMIT, how, str(folder)], capture_output=True, text=True,
                          timeout=120, check=True)


@pytest.mark.slow  # two interpreters importing azure-ai-ml
def test_a_submission_through_a_real_ml_client_prints_only_our_lines(tmp_path):
    write_workspace_config(tmp_path)
    write_project(tmp_path / "proj")
    ours = _submit("ours", tmp_path)
    assert "show_progress False" in ours.stdout  # no tqdm "Uploading aml-magics-snapshot-… (0.06 MBs)" bar
    assert "ended: TargetError Azure ML: authentication failed while trying to submit the job" in ours.stdout
    assert EXPERIMENTAL not in ours.stdout + ours.stderr and "Uploading" not in ours.stderr
    bare = _submit("sdk", tmp_path)  # the control: what a user saw on every submission before
    assert bare.stderr.count(EXPERIMENTAL) >= 6


# -- the snapshot ---------------------------------------------------------------------------------


def _project(folder: Path) -> Path:
    write_project(folder)
    (folder / "config.json").write_text(json.dumps(WORKSPACE))  # the workspace's, beside the script
    for name in (".azureml/config.json", ".aml_magics/cells/c.py", ".git/HEAD", "data/big.bin", "sub/config.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    (folder / "sub" / "config.json").write_text('{"lr": 0.1}')  # the script's own settings: uploaded
    return folder


def test_the_snapshot_never_takes_the_workspace_settings_and_honours_amlignore(tmp_path):
    source = _project(tmp_path / "proj")
    (source / ".gitignore").write_text("data/\n")
    snapshot = make_snapshot(source, "train.py")
    try:
        assert snapshot_files(snapshot) == sorted([f"{NODE_FOLDER}/", ".gitignore", "sub/config.json", "train.py"])
    finally:
        shutil.rmtree(snapshot)
    (source / ".amlignore").write_text("sub/\n")  # .amlignore wins over .gitignore, as in Azure ML
    snapshot = make_snapshot(source, "train.py")
    try:
        assert snapshot_files(snapshot) == sorted([f"{NODE_FOLDER}/", ".amlignore", ".gitignore", "data/big.bin", "train.py"])
    finally:
        shutil.rmtree(snapshot)


def test_a_snapshot_above_the_file_limit_warns_and_a_big_one_gets_an_upload_line(tmp_path, monkeypatch):
    monkeypatch.delenv("AML_SNAPSHOT_NO_FILE_LIMIT", raising=False)
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.py").write_text("x = 1\n")
    assert snapshot_notes(small) == []
    many = tmp_path / "many"
    many.mkdir()
    for i in range(SNAPSHOT_MAX_FILES + 1):
        (many / f"f{i}.txt").write_text("x")
    [note] = snapshot_notes(many)
    assert note.startswith(f"WARNING the snapshot has {SNAPSHOT_MAX_FILES + 1} files, above Azure ML's limit of 2000")
    monkeypatch.setenv("AML_SNAPSHOT_NO_FILE_LIMIT", "1")
    assert snapshot_notes(many) == []
    with open(small / "model.bin", "wb") as handle:
        handle.truncate(UPLOAD_LINE_BYTES + 1024 * 1024)
    assert snapshot_notes(small) == ["uploading the snapshot: 6.0 MB in 2 files"]


# -- the simulator without a workspace config -----------------------------------------------------


def test_the_simulator_without_a_config_uses_a_simulated_workspace_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AML_MAGICS_CACHE_DIR", str(tmp_path / "cache"))
    write_project(tmp_path / "proj", "print('ran on the simulated node')\n")
    use_simulator(monkeypatch, tmp_path / "sim")
    assert cli.main(["run", "proj/train.py", "--target", "azureml", "--sdk", "v2", "--compute", "cpu-cluster",
                     "--no-debug"]) == 0
    out = capsys.readouterr().out
    assert "aml_magics: using a simulated workspace (AML_MAGICS_AZUREML_BACKEND=simulator, no config.json found): " \
           "workspace simulated-workspace" in out
    assert "ran on the simulated node" in out
    monkeypatch.delenv("AML_MAGICS_AZUREML_BACKEND")
    with pytest.raises(TargetError, match="no Azure ML workspace config"):  # the real service still needs one
        settings.locate_workspace(None, tmp_path)
