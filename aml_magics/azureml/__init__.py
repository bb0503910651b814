"""Azure ML support: the ``azureml`` target's submission, run following and pipeline-step
debugging with azureml-core (SDK v1), and its runs as azure-ai-ml ``command()`` jobs (SDK v2,
:mod:`.v2`; :mod:`.sdk` picks one); the simulated control plane (:mod:`.simulator`,
:mod:`.v2.simulator`). Importing this package imports neither SDK; each is loaded when a run or
pipeline is built. Pipelines are started from the API:

    import aml_magics
    group = aml_magics.debug_pipeline([train_step, score_step], ["train"], timeout=600)
    group.steps["train"].wait_for_endpoint()
"""
