"""Run the node side: ``python path/to/node ...`` (a folder) or ``python path/to/node/__main__.py ...``.

Run that way, this folder is no package yet: it is loaded as the private package
``_aml_magics_node`` (relative imports then work, and the user's ``import session`` or
``import wire`` never finds ours). ``--launch`` starts a container's several ranks instead.
"""

import os
import sys

PACKAGE = "_aml_magics_node"  # wire.PACKAGE (this file cannot import it before the package exists)


def _load_private_package():
    import importlib
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return lambda name: importlib.import_module(f"{PACKAGE}.{name}")


if __name__ == "__main__":
    if __package__:  # python -m aml_magics.node
        import importlib

        load = lambda name: importlib.import_module(f"{__package__}.{name}")  # noqa: E731
    else:
        load = _load_private_package()
    if sys.argv[1:2] == ["--launch"]:
        sys.exit(load("launcher").main(sys.argv[2:]))
    sys.exit(load("main").main())
