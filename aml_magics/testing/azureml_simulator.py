"""The simulated Azure ML control plane, for tests (it lives in :mod:`aml_magics.azureml.simulator`)."""

from ..azureml.simulator import *  # noqa: F401,F403
from ..azureml.simulator import NamespaceUnavailable, NodeNamespace, Simulator, get_simulator, simulated_azureml

__all__ = ["NamespaceUnavailable", "NodeNamespace", "Simulator", "get_simulator", "simulated_azureml"]
