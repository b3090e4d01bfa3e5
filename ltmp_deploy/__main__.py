"""``python -m ltmp_deploy``: the ``ltmp-deploy`` command."""

import sys

from ltmp_deploy.cli import main

sys.exit(main())
