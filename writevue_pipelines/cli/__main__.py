"""``python -m writevue_pipelines.cli``: the same as the ``writevue`` command."""

from .app import main

raise SystemExit(main())
