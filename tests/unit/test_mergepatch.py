"""Table tests for kubestream.mergepatch (JSON merge patch, RFC 7386)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from kubestream import mergepatch

# RFC 7386 Appendix A, every row: (original, patch, result)
RFC_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("original, patch, result", RFC_EXAMPLES)
def test_apply_follows_rfc_7386_appendix_a(original: Any, patch: Any, result: Any) -> None:
    kept = copy.deepcopy((original, patch))
    assert mergepatch.apply(original, patch) == result
    assert (original, patch) == kept  # inputs untouched


# (before, after, the patch diff must produce)
DIFF_CASES = [
    ("equal", {"a": 1, "b": {"c": [1]}}, {"a": 1, "b": {"c": [1]}}, {}),
    ("add_key", {"a": 1}, {"a": 1, "b": 2}, {"b": 2}),
    ("remove_key", {"a": 1, "b": 2}, {"a": 1}, {"b": None}),
    ("change_nested", {"m": {"labels": {"x": "1", "y": "2"}}}, {"m": {"labels": {"x": "1", "y": "3", "z": "4"}}},
     {"m": {"labels": {"y": "3", "z": "4"}}}),
    ("remove_nested", {"m": {"labels": {"x": "1", "y": "2"}}}, {"m": {"labels": {"x": "1"}}},
     {"m": {"labels": {"y": None}}}),
    ("list_replaced_whole", {"t": [{"key": "a"}]}, {"t": [{"key": "a"}, {"key": "b"}]},
     {"t": [{"key": "a"}, {"key": "b"}]}),
    ("list_emptied", {"t": [1]}, {"t": []}, {"t": []}),
    ("object_to_scalar", {"a": {"b": 1}}, {"a": 5}, {"a": 5}),
    ("scalar_to_object", {"a": 5}, {"a": {"b": 1, "c": None}}, {"a": {"b": 1}}),
    ("object_emptied", {"a": {"b": 1}}, {"a": {}}, {"a": {"b": None}}),
    ("none_in_after_is_absent", {"a": 1, "b": 2}, {"a": 1, "b": None}, {"b": None}),
    ("none_in_both_is_nothing", {"a": None}, {"b": None}, {}),
    ("not_objects", [1], [2], [2]),
    ("before_not_an_object", "x", {"a": {"b": None, "c": 1}}, {"a": {"c": 1}}),
]


@pytest.mark.parametrize("name, before, after, expected", DIFF_CASES, ids=[c[0] for c in DIFF_CASES])
def test_diff_is_the_smallest_patch_and_applies_back(name: str, before: Any, after: Any, expected: Any) -> None:
    kept = copy.deepcopy((before, after))
    patch = mergepatch.diff(before, after)
    assert patch == expected
    assert (before, after) == kept
    def without_nones(doc: Any) -> Any:  # nulls stand for absent keys
        return mergepatch.apply({}, doc) if isinstance(doc, dict) else doc

    assert without_nones(mergepatch.apply(before, patch)) == without_nones(after)


def _rand_doc(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(6 if depth < 3 else 3)
    if kind == 0:
        return rng.choice(["a", "b", 1, 2, True])
    if kind == 1:
        return [rng.choice(["x", "y"]) for _ in range(rng.randrange(3))]
    if kind == 2:
        return rng.choice([{}, {"k": "v"}])
    return {rng.choice("abcde"): _rand_doc(rng, depth + 1) for _ in range(rng.randrange(4))}


@pytest.mark.parametrize("seed", range(200))
def test_diff_then_apply_round_trips_random_documents(seed: int) -> None:
    rng = random.Random(seed)
    before, after = _rand_doc(rng), _rand_doc(rng)
    assert mergepatch.apply(before, mergepatch.diff(before, after)) == after


def test_apply_result_shares_nothing_mutable_with_the_patch() -> None:
    patch = {"spec": {"tolerations": [{"key": "a"}]}}
    out = mergepatch.apply({}, patch)
    out["spec"]["tolerations"].append({"key": "b"})
    assert patch == {"spec": {"tolerations": [{"key": "a"}]}}
