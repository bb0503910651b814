"""Azure ML SDK v2 (azure-ai-ml): the ``azureml`` target's runs as ``command()`` jobs.

- :mod:`.job` builds the job offline with azure-ai-ml's own classes (``command()``, an
  Environment with debugpy added, PyTorch/MPI distribution, ``VsCodeJobService``), from
  the same snapshot the v1 path builds (bootstrap as entry point, the user's script and
  arguments after ``--`` untouched);
- :mod:`.service` is the control plane: an ``MLClient`` (``from_config()`` or explicit
  ids, ``DefaultAzureCredential``), or the simulator's stand-in with the same surface;
- :mod:`.monitor` follows a job: status, ``user_logs/std_log*.txt`` every ~2 s, the
  VS Code service URL, cancel through ``jobs.begin_cancel``.

Importing this package imports no Azure library; each module does so when called.
"""
