"""Deployments in a container, as in Microsoft's guide (``docker run -p 8000:5001 -p 5678:5678
-v <score.py>:/var/azureml-app/score.py ...``), made one option: ``--target docker``.

It reuses the docker target (targets/docker.py): the same cached environment image (built from
the deployment's dependencies plus ``azureml-inference-server-http``), the same container life
cycle (it dies with its owner, runs as the invoking user), cleanup and log streaming. What
differs is only the container: score.py alone is mounted, read-only, at
``/var/azureml-app/<score.py>`` (the guide's app root; edits on the host are live, and nothing
else of its folder is exposed), the in-process server script at ``/aml_magics/deploy_server.py``
(read-only), ``--model-dir`` at ``/var/azureml-app/azureml-models/<name>/1`` (read-only, as
``AZUREML_MODEL_DIR``), and both the debug port and the scoring port (5001 inside, as in the
guide) are published on 127.0.0.1 only. launch.json maps the local folder to ``/var/azureml-app``.

``--image IMAGE`` (an existing inference image, e.g. one from ``Model.package``): no environment
is built; a thin image FROM it adds only debugpy (in ``/aml_magics/site``), the bootstrap and
the server script (images.ensure_inference_image, cached by the image id, debugpy and
our files), and the server runs with the image's own Python that has
``azureml_inference_server_http``. score.py is mounted the same way, so what the image keeps
at ``/var/azureml-app`` (a packaged model under ``azureml-models``, its ``AZUREML_MODEL_DIR``)
stays visible.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .. import images
from ..install import needs
from ..spec import RunSpec
from ..target_base import RunContext
from ..targets import TargetError, register_target
from ..targets import docker as docker_target

APP_ROOT = "/var/azureml-app"
MODELS_ROOT = f"{APP_ROOT}/azureml-models"
SERVER_FILE = Path(__file__).resolve().parent / "server.py"
SERVER_NAME = "deploy_server.py"  # its name in images and containers
SERVER_IN_CONTAINER = f"{images.ROOT}/{SERVER_NAME}"
HTTP_PORT_IN_CONTAINER = 5001
LOOPBACK = "127.0.0.1"
TARGET_KEY = "docker-deploy"  # registry key; the target still calls itself "docker"


def model_dir_in_container(model_dir: Path) -> str:
    # The single-model layout of AKS/ACI: azureml-models/<name>/<version>.
    return f"{MODELS_ROOT}/{model_dir.name or 'model'}/1"


def container_args(score_relative: str, http_port: int = HTTP_PORT_IN_CONTAINER) -> tuple[str, ...]:
    """The server script's arguments inside the container."""
    return ("--entry-script", f"{APP_ROOT}/{Path(score_relative).as_posix()}", "--host", "0.0.0.0",
            "--http-port", str(http_port), "--report-host", LOOPBACK)


class DeployDockerRun(docker_target.DockerRun):
    """A docker run handle that also knows where the scoring port is published."""

    def __init__(self, ctx: RunContext, name: str, client_host: str) -> None:
        super().__init__(ctx, name, client_host)
        self.http_host_port: int | None = None

    def map_scoring_uri(self, uri: str) -> str:
        if self.http_host_port is None:
            return uri
        return urlunsplit(urlsplit(uri)._replace(netloc=f"{LOOPBACK}:{self.http_host_port}"))


class DockerDeployTarget(docker_target.DockerTarget):
    name = "docker"
    run_type = DeployDockerRun
    app_dir = APP_ROOT
    name_prefix = "deploy-"
    mounts_source = False  # score.py alone, read-only

    def __init__(self, model_dir: str | None = None, http_port: int | None = None, image: str | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self.model_dir = Path(model_dir) if model_dir else None
        self.http_port = http_port or None
        self.image = image or None

    def check(self, spec: RunSpec) -> None:
        super().check(spec)
        if self.image:
            images.image_id_of(self.client, self.image)  # one line now, not after a build

    def prepare_image(self, run: docker_target.DockerRun, spec: RunSpec) -> tuple[str, str]:
        if not self.image:
            return super().prepare_image(run, spec)
        return images.ensure_inference_image(
            self.client, self.image, files={SERVER_NAME: SERVER_FILE.read_bytes()}, log=run.events.line,
            on_build=lambda: run.events.state("building"), token=run.scope.token, uses=run.image_uses)

    @staticmethod
    def score_in_container(spec: RunSpec) -> str:
        """The in-container path of score.py, from the server's ``--entry-script`` argument."""
        args = list(spec.args)
        return args[args.index("--entry-script") + 1]

    def score_on_host(self, spec: RunSpec) -> Path:
        return spec.source_dir.resolve() / PurePosixPath(self.score_in_container(spec)).relative_to(APP_ROOT)

    def container_extras(self, spec: RunSpec) -> docker_target.ContainerExtras:
        bind = docker_target.BindMount
        mounts = [bind(str(self.score_on_host(spec)), self.score_in_container(spec), read_only=True)]
        if not self.image:  # (an --image has the server script in it)
            mounts.append(bind(str(Path(spec.script_path).resolve()), SERVER_IN_CONTAINER, read_only=True))
        if self.model_dir is not None:
            mounts.append(bind(str(self.model_dir.resolve()), model_dir_in_container(self.model_dir), read_only=True))
        return docker_target.ContainerExtras(
            script=SERVER_IN_CONTAINER,
            mounts=mounts,
            ports={f"{HTTP_PORT_IN_CONTAINER}/tcp": (LOOPBACK, self.http_port)},
            labels={f"{images.LABEL}.deployment": "1"},
            mount_source=False,
        )

    def on_started(self, run: DeployDockerRun, spec: RunSpec, container: Any,  # type: ignore[override]
                   tag: str, publish: str) -> None:
        run.http_host_port = docker_target.published_port(container, HTTP_PORT_IN_CONTAINER)
        mounted = f"{self.score_in_container(spec)} = {self.score_on_host(spec)} (read-only)"
        run.events.line(
            f"aml_magics: container {container.name} ({tag}) started; {mounted}; "
            f"scoring port {HTTP_PORT_IN_CONTAINER} published on {LOOPBACK}:{run.http_host_port}"
            + self.published_text(run, publish))


def _factory(**options: Any) -> DockerDeployTarget:
    try:
        import docker  # noqa: F401 - the SDK is an extra
    except ImportError:
        raise TargetError(needs("deployments in docker need the docker SDK", "docker")) from None
    return DockerDeployTarget(**options)


register_target(TARGET_KEY, _factory, capabilities=docker_target.DockerTarget.capabilities, listed=False)
