"""Arrow layouts of what mining and labelling write: merged descriptors per item, and failed rows."""

import pyarrow as pa

# Each item's merged descriptors; `sources` names every model that gave the descriptor.
DESCRIPTOR_TYPE = pa.list_(pa.struct([("descriptor", pa.string()), ("confidence", pa.float64()), ("sources", pa.list_(pa.string()))]))
# One row per LLM request that failed (the backend's error, or an answer that never parsed, with its raw text).
FAILURE_SCHEMA = pa.schema([(name, pa.string()) for name in ("task", "source", "id", "error", "raw")])
