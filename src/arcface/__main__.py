"""``python -m arcface``: the ``arcface`` command where the package is on the path but not installed (docker/build.sh
reads the image tags this way, with only the standard library)."""

import sys

from arcface.cli import main

sys.exit(main())
