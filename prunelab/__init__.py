"""prunelab: prune, recover, stress and evaluate causal language models.

Library first: every CLI command is a thin layer over a public function here, taking and returning plain
objects (``nn.Module``, dataclasses)::

    import prunelab
    lm = prunelab.load("smollm2-135m")
    info = prunelab.model_info(lm.model)
"""

__version__ = "0.1.0"

from prunelab.errors import PrunelabError
from prunelab.models import LoadedModel, load, model_info, save

__all__ = ["LoadedModel", "PrunelabError", "load", "model_info", "save", "__version__"]
