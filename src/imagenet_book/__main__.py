"""``python -m imagenet_book ...`` (and ``torchrun -m imagenet_book ...``): see :mod:`imagenet_book.cli`."""

import sys

from .cli import main

sys.exit(main())
