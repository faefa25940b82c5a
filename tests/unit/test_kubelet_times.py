"""``errimagepull:times=N`` of the simulated kubelet: the first N pods of a name fail to pull, later ones
follow what they would without the annotation (kubelet_rules, pure)."""

from __future__ import annotations

import pytest

from devkit.kubelet_rules import PodOrdinals, Rule, parse_rule, plan, rule_for_attempt

CREATING = {"waiting": {"reason": "ContainerCreating"}}


def creating_pod() -> dict:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"nodeName": "n", "containers": [{"name": "base", "image": "img"}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "base", "state": CREATING}]}}


@pytest.mark.parametrize(("text", "expected"), [
    ("errimagepull:times=2", Rule("errimagepull", times=2)),
    ("errimagepull:times=0,backoff=1", Rule("errimagepull", times=0, backoff=1.0)),
])
def test_parse_times(text: str, expected: Rule) -> None:
    assert parse_rule(text) == expected


@pytest.mark.parametrize(("text", "match"), [
    ("errimagepull:times=-1", ">= 0"),
    ("errimagepull:times=two", "not an integer"),
    ("errimagepull:times=1.5", "not an integer"),
    ("succeed:times=1", "takes no 'times'"),
])
def test_bad_times(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_rule(text)


def test_ordinals_count_uids_per_name_and_namespace() -> None:
    ordinals = PodOrdinals()
    assert [ordinals.of("ns", "p", u) for u in ("u1", "u1", "u2", "u3", "u2")] == [0, 0, 1, 2, 1]
    assert ordinals.of("ns", "q", "u1") == 0 and ordinals.of("other", "p", "u9") == 0


@pytest.mark.parametrize(("ordinal", "fallback", "step"), [
    (0, Rule("succeed"), ("pull", "ErrImagePull")),
    (1, Rule("succeed"), ("pull", "ErrImagePull")),
    (2, Rule("succeed"), ("start", "")),  # the third pod of the name starts
    (5, None, ("spawn", "")),  # process mode: it runs its command
])
def test_first_pods_fail_to_pull_then_start(ordinal: int, fallback: Rule | None, step: tuple[str, str]) -> None:
    rule = rule_for_attempt(parse_rule("errimagepull:times=2"), ordinal, fallback)
    got = plan(creating_pod(), "n", rule, None if rule is not None else None)
    assert got is not None and (got.token, got.reason) == step


def test_without_times_every_pod_fails_to_pull() -> None:
    rule = parse_rule("errimagepull")
    assert rule_for_attempt(rule, 100, Rule("succeed")) is rule
