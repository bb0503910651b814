"""The node side of every run: what executes on the target, around the user's script.

A runnable folder (``python path/to/node [options] -- SCRIPT ARGS``), stdlib + debugpy only,
shipped whole beside the user's files (a snapshot, an image, a container). On a node it runs
under the private package name ``_aml_magics_node`` (see ``__main__``), so nothing of it
collides with the user's modules; in the owner's process it is ``aml_magics.node``, of which
the owner imports only :mod:`.wire`.

One module per concern: :mod:`.wire` (the marker format and what the owner shares),
:mod:`.markers` (the authenticated lines), :mod:`.owner` and :mod:`.reaper` (the owner's watch,
the process tree), :mod:`.address` and :mod:`.args` (where to listen, the command line),
:mod:`.relay` (the TLS relay), :mod:`.liveness` (a client gone), :mod:`.driver` (debugpy),
:mod:`.session` (the attach windows), :mod:`.idle` (--idle-timeout), :mod:`.script` (the
user's script), :mod:`.imports` (patching a module on its first import), :mod:`.shim` (the
user's own debugpy calls), :mod:`.collectives` (torch.distributed under a debugger),
:mod:`.capsule` and :mod:`.render` (the crash capsule, values rendered safely),
:mod:`.launcher` (a container's several ranks), :mod:`.main` (the entry).
"""
