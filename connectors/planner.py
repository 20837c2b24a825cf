"""Modbus request planning: merge tags into as few reads as the protocol allows.

Tags of the same unit id and table are sorted by address and merged while the gap between them
is at most ``max_gap`` and the merged read stays within the per-request limit (125 registers or
2,000 bits by the Modbus specification; configurable for out-of-spec devices). Reading a few
unused registers in a gap is far cheaper than another round trip on a 5G link.

>>> tags = [Tag("a", 1, "holding", 100, 2), Tag("b", 1, "holding", 102, 2),
...         Tag("c", 1, "holding", 110, 1), Tag("d", 1, "holding", 400, 2)]
>>> [(r.start, r.count, [t.field for t, _ in r.tags]) for r in plan(tags, max_gap=10)]
[(100, 11, ['a', 'b', 'c']), (400, 2, ['d'])]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Table = Literal["coil", "discrete", "holding", "input"]

#: Modbus read function code of each table.
FUNCTION_CODE: dict[str, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
#: Specification limits per request: registers for FC3/FC4, bits for FC1/FC2.
MAX_REGISTERS = 125
MAX_BITS = 2000


@dataclass(frozen=True, slots=True)
class Tag:
    """One value to read: ``count`` registers (or bits) at a 0-based ``address``."""

    field: str
    unit_id: int
    table: Table
    address: int
    count: int = 1

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(slots=True)
class Request:
    """One read: a unit, a table, a contiguous range, and where each tag sits in it."""

    unit_id: int
    table: Table
    start: int
    count: int
    tags: list[tuple[Tag, int]] = field(default_factory=list)

    @property
    def function_code(self) -> int:
        return FUNCTION_CODE[self.table]


def plan(
    tags: Iterable[Tag],
    max_gap: int = 16,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[Request]:
    """Group ``tags`` into the fewest requests within the limits.

    Overlapping tags (two views of the same registers) share a request. A single tag larger
    than the limit is a configuration error and raises ``ValueError``.
    """
    groups: dict[tuple[int, Table], list[Tag]] = defaultdict(list)
    for tag in tags:
        groups[(tag.unit_id, tag.table)].append(tag)
    out: list[Request] = []
    for (unit, table), members in sorted(groups.items()):
        limit = max_bits if table in ("coil", "discrete") else max_registers
        members.sort(key=lambda t: (t.address, t.count))
        current: Request | None = None
        for tag in members:
            if tag.count > limit:
                raise ValueError(
                    f"{tag.field}: {tag.count} {table} values exceed the {limit} per request"
                )
            if current is not None:
                end = current.start + current.count
                new_end = max(end, tag.end)
                if tag.address - end <= max_gap and new_end - current.start <= limit:
                    current.count = new_end - current.start
                    current.tags.append((tag, tag.address - current.start))
                    continue
            current = Request(unit, table, tag.address, tag.count, [(tag, 0)])
            out.append(current)
    return out
