"""``python -m natdeploy ...``: the same as ``natdeploy ...``."""

import sys

from natdeploy.cli import main

sys.exit(main())
