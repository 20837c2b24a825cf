"""Modbus request planning: fewest requests, never over the limits, every tag placed right."""

from __future__ import annotations

import random

import pytest

from connectors.planner import MAX_REGISTERS, Tag, plan


def test_adjacent_tags_merge_into_one_request() -> None:
    tags = [Tag(f"s{i}", 1, "holding", 100 + 2 * i, 2) for i in range(8)]
    (req,) = plan(tags)
    assert (req.start, req.count, req.function_code) == (100, 16, 3)
    assert [off for _, off in req.tags] == list(range(0, 16, 2))


def test_gap_larger_than_max_gap_splits() -> None:
    tags = [Tag("a", 1, "input", 0), Tag("b", 1, "input", 50)]
    assert len(plan(tags, max_gap=10)) == 2
    assert len(plan(tags, max_gap=49)) == 1


def test_units_and_tables_never_mix() -> None:
    tags = [Tag("a", 1, "holding", 0), Tag("b", 2, "holding", 1), Tag("c", 1, "input", 1),
            Tag("d", 1, "coil", 0), Tag("e", 1, "discrete", 0)]  # fmt: skip
    reqs = plan(tags)
    assert len(reqs) == 5
    assert {(r.unit_id, r.table) for r in reqs} == {
        (1, "holding"), (2, "holding"), (1, "input"), (1, "coil"), (1, "discrete")
    }  # fmt: skip


def test_register_limit_is_respected_and_configurable() -> None:
    tags = [Tag(f"s{i}", 1, "holding", 2 * i, 2) for i in range(100)]  # 200 registers
    reqs = plan(tags)
    assert [r.count for r in reqs] == [124, 76]
    assert all(r.count <= MAX_REGISTERS for r in reqs)
    assert max(r.count for r in plan(tags, max_registers=20)) <= 20


def test_bits_limit_is_2000() -> None:
    tags = [Tag(f"b{i}", 1, "coil", i) for i in range(4500)]
    assert [r.count for r in plan(tags)] == [2000, 2000, 500]


def test_overlapping_views_share_registers() -> None:
    tags = [Tag("as_float", 1, "holding", 10, 2), Tag("high_word", 1, "holding", 10, 1)]
    (req,) = plan(tags)
    assert req.count == 2
    assert sorted(off for _, off in req.tags) == [0, 0]


def test_a_tag_over_the_limit_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="name: 130 holding values exceed the 125"):
        plan([Tag("name", 1, "holding", 0, 130)])


@pytest.mark.parametrize("seed", range(20))
def test_random_layouts_cover_every_tag_exactly_within_limits(seed: int) -> None:
    rng = random.Random(seed)
    tags = [
        Tag(f"t{i}", rng.randint(1, 3), rng.choice(["holding", "input"]),
            rng.randint(0, 3000), rng.choice([1, 2, 4]))
        for i in range(300)
    ]  # fmt: skip
    reqs = plan(tags, max_gap=rng.randint(0, 40))
    placed = {}
    for r in reqs:
        assert r.count <= MAX_REGISTERS
        for tag, off in r.tags:
            assert (tag.unit_id, tag.table) == (r.unit_id, r.table)
            assert r.start + off == tag.address
            assert off + tag.count <= r.count
            placed[tag.field] = tag
    assert set(placed) == {t.field for t in tags}
