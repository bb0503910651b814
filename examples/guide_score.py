# ruff: noqa - the guide's code as it is written (its style kept on purpose)
# A score.py written the way Microsoft's guide "Interactive debugging with VS Code" (Azure ML,
# "Debug and troubleshoot deployments") says: it starts with debugpy.listen(('0.0.0.0', 5678))
# and debugpy.wait_for_client(). It runs unchanged under aml_magics:
#
#     aml-debug deploy examples/guide_score.py --port 0 --timeout 60
#
# listen() returns the run's own endpoint (loopback, or the container's port published on
# 127.0.0.1) and binds nothing on 0.0.0.0; wait_for_client() waits at most the run's attach
# window, so the server comes up even when nobody attaches (README: "Scripts written the
# guide's way"). init() and run() are a small stand-in model: y = 3x + 1.
import json

import debugpy
# Allows other computers to attach to debugpy on this IP address and port.
debugpy.listen(('0.0.0.0', 5678))
# Wait 30 seconds for a debugger to attach. If none attaches, the script continues as normal.
debugpy.wait_for_client()
print("Debugger attached...")


def init():
    global model
    model = {"w": 3.0, "b": 1.0}
    print("model loaded", model)


def run(raw_data):
    data = json.loads(raw_data)["data"]
    predictions = [model["w"] * x + model["b"] for x in data]
    return {"predictions": predictions}
