"""Operation types: one declaration each (``ktrdr.optypes.defn``), one module per type."""

from ktrdr.optypes.defn import (
    ON_COORDINATOR,
    OpType,
    Rejected,
    Route,
    UnknownOpType,
    declare,
    on,
    op_type,
    op_types,
    retract,
    type_names,
    types_on,
)

__all__ = ["ON_COORDINATOR", "OpType", "Rejected", "Route", "UnknownOpType", "declare", "on", "op_type",
           "op_types", "retract", "type_names", "types_on"]
