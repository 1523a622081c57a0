"""warmgraph: choose bucket shapes, compile one graph per bucket, keep graphs on disk, run through them.

``import warmgraph`` stays light: it never imports torch, torch_npu, habana_frameworks or vllm.
"""

from warmgraph.bucketing import BucketSet, MissPolicy
from warmgraph.errors import WarmgraphError

__version__ = "0.1.0"
__all__ = ["BucketSet", "MissPolicy", "WarmgraphError", "__version__"]
