"""A privfed message's (config, arrays) as Flower ``RecordDict`` content and back: the signed message's fields in
the ``privfed`` ConfigRecord, its vectors in the ``arrays`` ArrayRecord. Used by both the ServerApp's engine and the
ClientApp relay; imports Flower and numpy only."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict


def to_record(config, arrays) -> RecordDict:
    """A privfed message's (config, arrays) as Flower content."""
    content = RecordDict({"privfed": ConfigRecord(dict(config))})
    if arrays:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return content


def from_record(content: RecordDict):
    """Inverse of :func:`to_record` (values are checked strictly by the privfed codec afterwards)."""
    config = dict(content["privfed"]) if "privfed" in content else {}
    arrays = {k: a.numpy() for k, a in content["arrays"].items()} if "arrays" in content else {}
    return config, arrays
