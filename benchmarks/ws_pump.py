"""A websocket pump for OpenSSH's ``ProxyCommand`` (what Microsoft's ``_ssh_connector.py`` does):
stdin → binary messages to ``URL``, messages → stdout. The bearer token comes from the
environment (``AML_MAGICS_BENCH_TOKEN``), never the command line. Used by bench_proxy.py."""

from __future__ import annotations

import os
import sys
import threading

from websockets.sync.client import connect


def main() -> None:
    token = os.environ["AML_MAGICS_BENCH_TOKEN"]
    with connect(sys.argv[1], additional_headers={"Authorization": f"Bearer {token}"}, max_size=None,
                 compression=None) as ws:

        def upstream() -> None:
            while data := os.read(0, 65536):
                ws.send(data)
            ws.close()

        threading.Thread(target=upstream, daemon=True).start()
        try:
            for message in ws:
                os.write(1, message if isinstance(message, bytes) else message.encode())
        except Exception:
            pass


if __name__ == "__main__":
    main()
