"""The simulated Azure ML control plane for SDK v2, for tests (see :mod:`aml_magics.azureml.v2.simulator`)."""

from ..azureml.v2.simulator import *  # noqa: F401,F403
from ..azureml.v2.simulator import SimV2Backend, get_v2_simulator

__all__ = ["SimV2Backend", "get_v2_simulator"]
