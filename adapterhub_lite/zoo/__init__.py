"""The zoo side: versioned bases, adapters and compositions on disk, and everything that reads or writes them.

`store` (the directory and its entries), `cards` (card.json), `stacks` and `compositions` (refs to a stack),
`loading` (zoo entries to models: a checked base, a stack), `evaluation` (metrics as cards record them),
`versions` (models written as new versions), `train` (training into the zoo), `combine` and `fuse` (new adapters from several,
new bases with adapters folded in; `streaming`: out of core), `exchange` (formats in and out), `hub` and
`hub_download` (the Hugging Face Hub), `sources` (a user's own model in), `build` (recipe profiles),
`report` (the HTML page), `running` (a stack on tensors from a file). The model side (`adapterhub_lite.model`
and the layers) knows nothing of it.
"""

from .store import BASE, Zoo, ZooEntry

__all__ = ["BASE", "Zoo", "ZooEntry"]
