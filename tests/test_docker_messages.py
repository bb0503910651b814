"""Docker's failures said in the user's terms (issue 17), against a real engine.

A dependency pip cannot resolve fails at once with pip's own line about it (no fallback to the
index, no other package blamed); ``--gpus`` on a host without a GPU runtime says so and how to
run without; a source path with a colon works; a base image without Python is named by the tag
the user gave, in a message not cut mid-word; credentials in a ``--pip`` URL are used on the
host and redacted everywhere they are shown or stored (log, label, the image's recipe).
"""

from __future__ import annotations

import base64
import io
import secrets
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import DOCKER_BASE, build_test_image

docker = pytest.importorskip("docker", reason="the docker SDK is not installed (pip install 'aml-magics[docker]')")

import aml_magics  # noqa: E402
from aml_magics import images  # noqa: E402
from aml_magics.options import OptionsError  # noqa: E402


@pytest.mark.docker
@pytest.mark.parametrize("requirement", ["aml-magics-no-such-package-xyz", "six==0.0.1"])
def test_unresolvable_dependency_is_final_with_pips_own_line(engine, workdir, no_container_left, requirement):
    (workdir / "job.py").write_text("print('not reached')\n")
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=0, pip=[requirement])
    assert run.wait(180) == "failed"
    first = run.detail.splitlines()[0]
    assert first.startswith("pip download on the host failed: ERROR: Could not find a version that satisfies "
                            f"the requirement {requirement}"), first
    assert "debugpy" not in run.detail and "last lines" not in run.detail  # pip's line is the whole story
    assert ("--wheels index" in first) == ("(from versions: none)" in first)  # the hint when no wheel exists
    assert "falling back" not in run.logs and "Step 1/" not in run.logs  # no build was tried


@pytest.mark.docker
def test_gpus_without_a_gpu_runtime_says_so(engine, workdir, no_container_left):
    if "nvidia" in (engine.info().get("Runtimes") or {}):
        pytest.skip("this engine has a GPU runtime")
    (workdir / "job.py").write_text("print('not reached')\n")
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=0, gpus="all")
    assert run.wait(120) == "failed"
    assert run.detail.startswith("--gpus all: this machine's Docker has no GPU runtime"), run.detail
    assert "\n" not in run.detail and "run without --gpus" in run.detail


@pytest.mark.docker
def test_source_path_with_a_colon_works(engine, workdir, no_container_left):
    src = workdir / "data:v2"
    src.mkdir()
    (src / "job.py").write_text("print('ran in', __import__('os').getcwd())\n")
    run = aml_magics.submit(str(src / "job.py"), target="docker", base_image=DOCKER_BASE, timeout=0)
    assert run.wait(120) == "completed", run.detail
    assert "ran in /app" in run.logs
    assert run.launch_config()["pathMappings"][0]["localRoot"] == "${workspaceFolder}/data:v2"


@pytest.mark.docker
def test_base_image_without_python_is_named_by_its_tag(engine, workdir, no_container_left):
    tag = "aml-magics-test-nopython:1"
    recipe = f'FROM {DOCKER_BASE}\nRUN ["/bin/rm", "-f", "/usr/bin/python3", "/usr/bin/python3.11", "/usr/bin/python"]\n'
    build_test_image(engine, recipe, tag)
    try:
        (workdir / "job.py").write_text("print('not reached')\n")
        run = aml_magics.submit("job.py", target="docker", base_image=tag, timeout=0)
        assert run.wait(120) == "failed"
        assert run.detail == (f"base image {tag} has no Python (neither python3 nor python is on its PATH); "
                              "choose a --base-image with Python 3")
    finally:
        engine.images.remove(tag, force=True)


def test_long_docker_messages_are_cut_at_a_word():
    text = "could not start the container because " + "something went wrong again " * 10
    short = images.shorten(text, 80)
    assert len(short) <= 80 and short.endswith(" …")
    assert text.startswith(short[:-2]) and text[len(short) - 2] == " "  # the cut is between words


# -- credentials in a --pip URL ---------------------------------------------------------------------

WHEEL = "demo_secret_pkg-1.0-py3-none-any.whl"


def _wheel() -> bytes:
    """A minimal pure-Python wheel: demo_secret_pkg with VALUE = 42."""
    files = {
        "demo_secret_pkg.py": "VALUE = 42\n",
        "demo_secret_pkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: demo-secret-pkg\nVersion: 1.0\n",
        "demo_secret_pkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n",
    }
    files["demo_secret_pkg-1.0.dist-info/RECORD"] = "".join(f"{name},,\n" for name in files) + \
        "demo_secret_pkg-1.0.dist-info/RECORD,,\n"
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return data.getvalue()


@pytest.fixture
def private_index():
    """An HTTP server on loopback that serves the wheel only with the right basic-auth credentials."""
    token = "tok" + secrets.token_hex(12)
    wheel = _wheel()
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            auth = self.headers.get("Authorization", "")
            seen.append(auth)
            if self.path != f"/{WHEEL}" or auth != "Basic " + base64.b64encode(f"user:{token}".encode()).decode():
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(wheel)))
            self.end_headers()
            self.wfile.write(wheel)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:{token}@127.0.0.1:{server.server_address[1]}/{WHEEL}", token, seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.docker
def test_credentials_in_a_pip_url_are_used_on_the_host_and_never_shown_or_stored(engine, workdir, private_index,
                                                                                   no_container_left):
    url, token, seen = private_index
    (workdir / "job.py").write_text("import demo_secret_pkg\nprint('value', demo_secret_pkg.VALUE)\n")
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=0,
                            pip=[f"demo-secret-pkg @ {url}"])
    assert run.wait(300) == "completed", run.detail + run.logs[-3000:]
    assert "value 42" in run.logs
    assert any(token in base64.b64decode(a.split()[1]).decode() for a in seen if a)  # pip used them, on the host
    assert token not in run.logs and "user:****@127.0.0.1" in run.logs
    tag = run.logs.split("building image ", 1)[1].split()[0]
    try:
        image = engine.images.get(tag)
        assert token not in str(image.labels) and "user:****@" in image.labels["aml_magics.deps"]
        recipe = " ".join(step.get("CreatedBy", "") for step in engine.api.history(tag))
        assert token not in recipe and f"/aml_magics/wheels/{WHEEL}" in recipe  # the wheel pip downloaded
    finally:
        engine.images.remove(tag, force=True)


def test_credentials_with_an_index_build_are_refused_in_one_line(workdir, private_index):
    pytest.importorskip("docker")
    url, token, _ = private_index
    (workdir / "job.py").write_text("print(1)\n")
    with pytest.raises(OptionsError) as info:
        aml_magics.submit("job.py", target="docker", timeout=0, wheels="index", pip=[f"demo-secret-pkg @ {url}"])
    message = str(info.value)
    assert "\n" not in message and token not in message
    assert "user:****@127.0.0.1" in message and "--wheels host" in message


def test_redact_hides_passwords_and_tokens_as_pip_does():
    assert images.redact("https://user:s3cr3t@host/simple") == "https://user:****@host/simple"
    assert images.redact("pkg @ https://ghp_TOKEN@host/p.whl") == "pkg @ https://****@host/p.whl"
    assert images.redact("git+ssh://git@github.com/org/repo") == "git+ssh://git@github.com/org/repo"
    assert images.redact("https://host:8443/simple six") == "https://host:8443/simple six"


def test_offline_recipe_names_downloaded_wheels_not_urls():
    from aml_magics.images.recipe import offline_environment
    from aml_magics.spec import EnvironmentSpec

    env = EnvironmentSpec(pip=("--extra-index-url=https://u:p@idx/simple", f"x @ https://u:p@h/{WHEEL}", "six"),
                          requirements="--index-url https://u:p@idx/simple\nidna\n")
    offline = offline_environment(env)
    assert offline.pip == ("six", f"x @ file:///aml_magics/wheels/{WHEEL}")
    assert offline.requirements == "idna\n"
