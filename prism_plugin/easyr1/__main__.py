"""``python -m prism_plugin.easyr1``: the EasyR1 launcher (see :mod:`prism_plugin.easyr1.launcher`)."""

from .launcher import main

raise SystemExit(main())
