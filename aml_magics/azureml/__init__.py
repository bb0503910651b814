"""Azure ML support: the ``azureml`` target's submission, run following and pipeline-step
debugging with azureml-core (SDK v1), and its runs as azure-ai-ml ``command()`` jobs (SDK v2,
:mod:`.v2`; :mod:`.sdk` picks one). Importing this package imports neither SDK; each is
loaded when a run or pipeline is built.

    from aml_magics.azureml import debug_pipeline
    result = debug_pipeline([train_step, score_step], ["train"], timeout=600)
    result.steps["train"].wait_for_endpoint()
"""

from __future__ import annotations

from typing import Any


def debug_pipeline(steps: Any, debug_steps: Any = None, **options: Any) -> Any:
    """Submit a pipeline with debugging on for chosen PythonScriptSteps (see .pipeline.debug_pipeline)."""
    from .pipeline import debug_pipeline as _debug_pipeline

    return _debug_pipeline(steps, debug_steps, **options)


__all__ = ["debug_pipeline"]
