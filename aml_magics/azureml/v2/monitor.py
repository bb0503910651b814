"""Following an SDK v2 job: the v1 RunMonitor (status every ~2 s, ``user_logs/std_log*.txt``
read incrementally, endpoint tags, cancel), plus the job's interactive services.

With ``--vscode-service`` the VS Code service's URL is read from the job's services once
it runs (``jobs.show_services``, node by node) and shown beside the debugpy endpoint: as a
log line and in the run's description, which the widget and the text view show.
"""

from __future__ import annotations

from typing import Any

from ..backend import first_line
from ..monitor import RunMonitor

SERVICE_STATES = {"Running", "Finalizing"}


class JobMonitor(RunMonitor):
    def __init__(self, backend: Any, run: Any, events: Any, *, reader: Any, scope: Any = None,
                 services: tuple[str, ...] = (), nodes: int = 1, description: str = "",
                 poll: float | None = None, routes: Any = None) -> None:
        super().__init__(backend, run, events, reader=reader, scope=scope, poll=poll)
        self.routes = routes  # JobRoutes (--connect auto|proxy), or None: direct
        self.services = services
        self.nodes = max(1, nodes)
        self.description = description
        self.service_urls: dict[tuple[str, int], str] = {}

    def route_for(self, endpoint: Any) -> Any:
        """How the tunnel's forwarder reaches ``endpoint``'s relay (None: directly)."""
        return self.routes.route_for(endpoint) if self.routes is not None else None

    def _read_logs(self, details: dict) -> None:
        super()._read_logs(details)
        if self.services and details.get("status") in SERVICE_STATES and not self._services_known():
            self._read_services()

    def _services_known(self) -> bool:
        return len(self.service_urls) >= len(self.services) * self.nodes

    def _read_services(self) -> None:
        fresh = []
        for node in range(self.nodes):
            if all((name, node) in self.service_urls for name in self.services):
                continue
            try:
                endpoints = self.run.service_endpoints(node)
            except Exception as exc:
                self._report(f"aml_magics: reading the job's services failed (retrying): {first_line(exc)}")
                return
            for name in self.services:
                url = endpoints.get(name)
                if url and (name, node) not in self.service_urls:
                    self.service_urls[(name, node)] = url
                    fresh.append((name, node, url))
        for _name, node, url in fresh:
            where = f" (node {node})" if self.nodes > 1 else ""
            self.events.line(f"aml_magics: VS Code service{where}: {url}")
        if fresh:
            self._describe()

    def _describe(self) -> None:
        urls = [url for (_, _), url in sorted(self.service_urls.items(), key=lambda item: item[0][1])]
        text = f"{self.description}; VS Code on the node: {', '.join(urls)}" if self.description \
            else f"VS Code on the node: {', '.join(urls)}"
        describe = getattr(self.events, "describe", None)
        if callable(describe):
            describe(text)
