"""Files the user sees are never damaged: concurrent writers lose nothing, planted links are never
followed, refusals are one line (``aml_magics/fileio.py``, ``launch.merge_into_file``, cell scripts)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import aml_magics
from aml_magics import fileio, launch
from aml_magics.launch import LaunchJsonError, attach_config, merge_into_file, parse_jsonc

pytestmark = pytest.mark.skipif(os.name != "posix", reason="links, modes and flock are POSIX")

PACKAGE_ROOT = Path(aml_magics.__file__).resolve().parent.parent

USER_FILE = """{
    // mine: keep this comment
    "version": "0.2.0",
    "configurations": [
        {"name": "Python Debugger: Current File", "type": "debugpy", "request": "launch", "program": "${file}"}
    ]
}
"""

# One writer process: waits until the test closes its stdin (so all start together), then merges
# ROUNDS configurations of its own, one merge each.
WRITER = """
import sys
from aml_magics import launch
path, who, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.stdin.read()
for i in range(rounds):
    config = launch.attach_config(f"{who}-{i}", "127.0.0.1", 5678, "/src", "/src")
    launch.merge_into_file(path, [config])
"""


def cfg(name: str) -> dict:
    return attach_config(name, "127.0.0.1", 5678, "/src", "/src")


def names(path: Path) -> list[str]:
    return [c["name"] for c in parse_jsonc(path.read_text(encoding="utf-8-sig"))["configurations"]]


def launch_json(folder: Path, text: str = USER_FILE) -> Path:
    path = folder / ".vscode" / "launch.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def leftovers(folder: Path) -> list[str]:
    """Temp and lock files a write left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".lock")))


def victim(tmp_path: Path, name: str = "victim.txt") -> Path:
    path = tmp_path / name
    path.write_text("precious, not a launch.json\n")
    return path


# -- concurrent writers ----------------------------------------------------------------------------


def test_ten_writer_processes_lose_no_configuration(tmp_path):
    path = launch_json(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")])}
    rounds = 5
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{n}", str(rounds)], stdin=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, text=True)
        for n in range(10)
    ]
    try:
        for writer in writers:  # the start line: every writer is blocked on its stdin until now
            writer.stdin.close()  # type: ignore[union-attr]
            writer.stdin = None
        errors = [writer.communicate(timeout=120)[1] for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert [w.returncode for w in writers] == [0] * 10, errors
    expected = {f"w{n}-{i}" for n in range(10) for i in range(rounds)}
    written = names(path)
    assert set(written) == expected | {"Python Debugger: Current File"}
    assert len(written) == len(expected) + 1
    assert "// mine: keep this comment" in path.read_text()
    assert leftovers(path.parent) == []


def test_ten_runs_in_one_process_with_one_launch_json(workdir):
    target = workdir / ".vscode" / "launch.json"
    runs = [
        aml_magics.submit(code=f"print('run {n}')\n", name=f"job{n}", port=0, timeout=0, launch_json=str(target))
        for n in range(10)
    ]
    for run in runs:
        assert run.wait(120) == "completed", run.logs
    for run in runs:
        assert f"aml_magics: wrote {run.name} to {target}" in run.logs
    assert sorted(names(target)) == sorted(f"job{n}" for n in range(10))
    assert leftovers(target.parent) == []


# -- planted links -------------------------------------------------------------------------------


def test_planted_backup_link_is_replaced_never_followed(tmp_path):
    path = launch_json(tmp_path)
    target = victim(tmp_path)
    backup = path.with_name("launch.json.bak")
    backup.symlink_to(target)
    result = merge_into_file(path, [cfg("job")])
    assert target.read_text() == "precious, not a launch.json\n"
    assert result.backup == backup
    assert not backup.is_symlink() and backup.read_text() == USER_FILE
    assert names(path) == ["Python Debugger: Current File", "job"]


def test_planted_lock_link_is_refused_in_one_line(tmp_path):
    path = launch_json(tmp_path)
    target = victim(tmp_path)
    path.with_name(".launch.json.lock").symlink_to(target)
    with pytest.raises(LaunchJsonError) as info:
        merge_into_file(path, [cfg("job")])
    message = str(info.value)
    assert message.startswith(f"cannot write {path}: ") and "\n" not in message, message
    assert target.read_text() == "precious, not a launch.json\n"
    assert path.read_text() == USER_FILE


def test_planted_temp_name_is_never_opened(tmp_path, monkeypatch):
    """Even a link at the exact temp name chosen (O_EXCL|O_NOFOLLOW) is skipped, not written through."""
    target = victim(tmp_path)
    path = tmp_path / "file.txt"
    path.write_text("old\n")
    planted = tmp_path / ".file.txt.planted.tmp"
    planted.symlink_to(target)
    names_given = iter(["planted", "fresh"])
    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: next(names_given))
    fileio.write_atomic(path, b"new\n")
    assert path.read_text() == "new\n"
    assert target.read_text() == "precious, not a launch.json\n"
    assert planted.is_symlink() and os.readlink(planted) == str(target)
    assert not (tmp_path / ".file.txt.fresh.tmp").exists()


def test_planted_cell_links_leave_the_victims_untouched(workdir):
    cells = workdir / ".aml_magics" / "cells"
    cells.mkdir(parents=True)
    temp_victim, script_victim = victim(workdir, "victim1.txt"), victim(workdir, "victim2.txt")
    (cells / ".job.py.tmp").symlink_to(temp_victim)  # the temp name the cell writer used to use
    (cells / "job.py").symlink_to(script_victim)
    run = aml_magics.submit(code="print('cell ran')\n", name="job", port=0, timeout=0)
    assert run.wait(120) == "completed", run.logs
    assert "cell ran" in run.logs
    assert temp_victim.read_text() == script_victim.read_text() == "precious, not a launch.json\n"
    assert not (cells / "job.py").is_symlink()
    assert (cells / "job.py").read_text() == "print('cell ran')\n"


def test_a_link_to_an_existing_file_at_launch_json_is_refused(tmp_path):
    """A planted ``.vscode/launch.json -> ~/somewhere/settings.json`` would have it rewritten: one
    line, both files untouched."""
    elsewhere = tmp_path / "home" / "settings.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(USER_FILE)
    link = tmp_path / "proj" / ".vscode" / "launch.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    with pytest.raises(LaunchJsonError) as info:
        merge_into_file(link, [cfg("job")])
    assert str(info.value) == f"{link}: is a symbolic link ({elsewhere}); refusing to write through it"
    assert elsewhere.read_text() == USER_FILE and link.is_symlink()
    assert sorted(p.name for p in link.parent.iterdir()) == ["launch.json"]
    with pytest.raises(LaunchJsonError, match="is a symbolic link"):
        launch.check_launch_json(link)


def test_a_linked_vscode_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "launch.json").write_text(USER_FILE)
    project = tmp_path / "proj"
    project.mkdir()
    (project / ".vscode").symlink_to(elsewhere)
    path = project / ".vscode" / "launch.json"
    with pytest.raises(LaunchJsonError) as info:
        merge_into_file(path, [cfg("job")])
    assert str(info.value) == (f"{path}: its folder is a symbolic link ({project / '.vscode'} -> {elsewhere}); "
                               "refusing to write through it")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["launch.json"]
    assert (elsewhere / "launch.json").read_text() == USER_FILE


def test_a_save_by_vs_code_during_a_merge_is_kept(tmp_path, monkeypatch):
    """VS Code saves launch.json (a temp file renamed onto it) between our reading and our writing:
    the merge notices, reads again and merges into what VS Code saved — neither side is lost."""
    path = tmp_path / ".vscode" / "launch.json"
    path.parent.mkdir()
    path.write_text(USER_FILE)
    saved = USER_FILE.replace('"name": "Python Debugger: Current File"', '"name": "Saved by VS Code"')
    assert saved != USER_FILE
    plan = launch._plan_merge
    saves = []

    def plan_while_vs_code_saves(*args, **kwargs):
        if not saves:  # once: as VS Code does it, a new file renamed over the old one
            temp = path.with_name("launch.json.vscode-tmp")
            temp.write_text(saved)
            os.replace(temp, path)
            saves.append(1)
        return plan(*args, **kwargs)

    monkeypatch.setattr(launch, "_plan_merge", plan_while_vs_code_saves)
    merge_into_file(path, [cfg("job")])
    assert names(path) == ["Saved by VS Code", "job"]


# -- refusals --------------------------------------------------------------------------------------


def test_dangling_link_launch_json_is_refused(tmp_path):
    missing = tmp_path / "elsewhere" / "launch.json"
    link = tmp_path / ".vscode" / "launch.json"
    link.parent.mkdir()
    link.symlink_to(missing)
    with pytest.raises(LaunchJsonError) as info:
        merge_into_file(link, [cfg("job")])
    message = str(info.value)
    assert message == f"{link}: is a symbolic link ({missing}); refusing to write through it"
    assert not missing.exists() and not missing.parent.exists()
    assert link.is_symlink() and os.readlink(link) == str(missing)
    assert sorted(p.name for p in link.parent.iterdir()) == ["launch.json"]


def test_read_only_launch_json_is_refused(tmp_path):
    path = launch_json(tmp_path)
    path.chmod(0o444)
    with pytest.raises(LaunchJsonError) as info:
        merge_into_file(path, [cfg("job")])
    assert str(info.value) == f"{path}: is read-only (mode 0444); make it writable or write elsewhere (left untouched)"
    assert path.read_text() == USER_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert sorted(p.name for p in path.parent.iterdir()) == ["launch.json"]


def test_a_folder_named_launch_json_is_refused(tmp_path):
    path = tmp_path / ".vscode" / "launch.json"
    path.mkdir(parents=True)
    with pytest.raises(LaunchJsonError, match="is not a regular file; refusing to replace it$"):
        merge_into_file(path, [cfg("job")])
    assert path.is_dir() and list(path.iterdir()) == []


def test_unwritable_place_is_one_line_with_the_path_and_the_reason(tmp_path):
    with pytest.raises(LaunchJsonError) as info:
        merge_into_file("/proc/x", [cfg("job")])
    message = str(info.value)
    assert message.startswith("cannot write /proc/x: ") and "\n" not in message, message
    assert not os.path.exists("/proc/x")


def test_aml_launch_json_write_to_proc_is_one_usage_error(shell, workdir):
    run = shell.run_cell_magic("aml_debug_run", "--port 0 --timeout 0 --wait --name probe", "print(1)\n")
    assert run.state == "completed", run.logs
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("aml_launch_json", f"{run.id} --write /proc/x")
    message = str(info.value)
    assert message.startswith("cannot write /proc/x: ") and "\n" not in message, message


def test_cli_too_long_integer_in_launch_json_is_one_line_exit_2(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("print('must not run')\n")
    path = launch_json(tmp_path, '{\n  "configurations": [],\n  "n": ' + "9" * 5000 + "\n}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "aml_magics.cli", "run", str(script), "--port", "0",
                           "--launch-json", str(path)], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{path}:3:8: number too long (5000 digits" in lines[0]
    assert path.read_text().endswith("9\n}\n")


# -- fileio on its own -----------------------------------------------------------------------------


def test_new_file_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(tmp_path):
    mask = os.umask(0o027)
    try:
        fresh = fileio.write_atomic(tmp_path / "sub" / "new.txt", b"one\n")
    finally:
        os.umask(mask)
    assert fresh == tmp_path / "sub" / "new.txt"
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
    fresh.chmod(0o600)
    fileio.write_atomic(fresh, b"two\n")
    assert fresh.read_bytes() == b"two\n"
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert leftovers(fresh.parent) == []


def test_a_failed_write_leaves_the_target_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "file.txt"
    path.write_text("old\n")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        fileio.write_atomic(path, b"new\n")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_follow_false_replaces_a_link_and_keeps_its_target(tmp_path):
    target = victim(tmp_path)
    link = tmp_path / "cell.py"
    link.symlink_to(target)
    assert fileio.write_atomic(link, b"print(1)\n", follow=False) == link
    assert not link.is_symlink() and link.read_bytes() == b"print(1)\n"
    assert target.read_text() == "precious, not a launch.json\n"


def test_describe_is_one_line_with_path_and_reason(tmp_path):
    refused = fileio.FileRefused(tmp_path / "x", "is read-only")
    assert fileio.describe(refused, tmp_path / "x") == f"{tmp_path / 'x'}: is read-only"
    assert isinstance(refused, OSError)
    denied = PermissionError(13, "Permission denied", str(tmp_path / ".x.lock"))
    assert fileio.describe(denied, tmp_path / "x") == (
        f"cannot write {tmp_path / 'x'}: Permission denied ({tmp_path / '.x.lock'})")


def test_lock_is_exclusive_between_processes_and_leaves_no_file(tmp_path):
    path = tmp_path / "launch.json"
    holder = ("import sys, pathlib; from aml_magics import fileio\n"
              "with fileio.locked(pathlib.Path(sys.argv[1])):\n"
              "    print('held', flush=True); sys.stdin.readline()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", holder, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout.readline() == "held\n"  # type: ignore[union-attr]
        with pytest.raises(fileio.FileRefused, match="another writer has held this lock"):
            with fileio.locked(path, timeout=0.2):
                pass
        child.stdin.write("\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        assert child.wait(timeout=60) == 0
        with fileio.locked(path, timeout=0.2):
            assert (tmp_path / ".launch.json.lock").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert list(tmp_path.iterdir()) == []


def test_check_launch_json_refuses_up_front_what_a_merge_would_refuse(tmp_path):
    """The check a run can make before it starts: nothing is written by it, whatever the file."""
    folder = tmp_path / ".vscode"
    folder.mkdir()
    launch.check_launch_json(folder / "launch.json")  # missing: it will be created
    path = launch_json(tmp_path)
    launch.check_launch_json(path)
    cases = {
        "top level": (b"[]\n", f"{path}:1:1: the top level must be an object, found an array"),
        "not utf-8": (b'{"a": "\xff"}', f"{path}:1:8: the file is not valid UTF-8"),
        "long int": (b'{"n": ' + b"1" * 5000 + b"}", f"{path}:1:7: number too long (5000 digits"),
    }
    for raw, message in cases.values():
        path.write_bytes(raw)
        with pytest.raises(LaunchJsonError) as info:
            launch.check_launch_json(path)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)
        assert path.read_bytes() == raw
    path.write_text(USER_FILE)
    path.chmod(0o444)
    with pytest.raises(LaunchJsonError, match=r"is read-only \(mode 0444\)"):
        launch.check_launch_json(path)
    path.unlink()
    path.symlink_to(tmp_path / "missing.json")
    with pytest.raises(LaunchJsonError, match="is a symbolic link"):
        launch.check_launch_json(path)
    assert sorted(p.name for p in folder.iterdir()) == ["launch.json"]


def test_private_folder_in_a_shared_place_is_ours_or_refused(tmp_path):
    """A well-known folder name in /tmp: a planted link, a file, or another user's folder is never
    used; our own is made (or tightened to) 0700."""
    made = fileio.private_folder(tmp_path / "mine")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    (tmp_path / "loose").mkdir(mode=0o777)
    os.chmod(tmp_path / "loose", 0o777)
    assert stat.S_IMODE(fileio.private_folder(tmp_path / "loose").stat().st_mode) == 0o700
    victim = tmp_path / "victim"
    victim.mkdir()
    before = victim.stat().st_mode
    (tmp_path / "planted").symlink_to(victim)
    with pytest.raises(fileio.FileRefused, match=r"planted: is not a folder \(a link, or a file\)"):
        fileio.private_folder(tmp_path / "planted")
    assert victim.stat().st_mode == before  # not even its mode touched through the link
    (tmp_path / "afile").write_text("")
    with pytest.raises(fileio.FileRefused, match="is not a folder"):
        fileio.private_folder(tmp_path / "afile")
    if os.getuid() == 0:  # as root the test can make a folder another user's
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 4242, 4242)
        with pytest.raises(fileio.FileRefused, match=r"belongs to another user \(uid 4242\)"):
            fileio.private_folder(theirs)
