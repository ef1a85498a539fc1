"""The original command line: ``python train.py --n_classes=10 --train_data=DIR --backbone=ResNet50 ...``.

All the work is done by the ``arcface`` library; ``python train.py --help`` lists every flag.
"""

import sys

from arcface.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
