"""imagenet_book: the helper package of the ImageNet course book.

Every notebook starts with::

    import imagenet_book as ib
    cfg = ib.start()

The package is the source of truth for what the chapters build: each public function's
docstring names the chapter that teaches it.
"""

from . import (augment, compress, data, engine, errors, faces, fastrecipe, files, finetune, imagenet1k, losses, metrics,
               models, optim, pretrain, probe, recipe, reference, results, search, selfsup, speed, tasks, viz, zoo)
from .runtime import PROFILES, Profile, Setup, SetupError, seed_everything, start

__all__ = ["PROFILES", "Profile", "Setup", "SetupError", "augment", "compress", "data", "engine", "errors", "faces",
           "fastrecipe", "files", "finetune", "imagenet1k", "losses", "metrics", "models", "optim", "pretrain",
           "probe", "recipe", "reference", "results", "search", "seed_everything", "selfsup", "speed", "start",
           "tasks", "viz", "zoo"]
__version__ = "0.1.0"
