"""The search-stability measure (rnas.search.stability)."""

from rnas.search.stability import decision_digest, is_decided, stability_summary, stable_from


def test_stable_from_finds_the_final_unchanged_stretch():
    assert stable_from([]) is None
    assert stable_from(["a"]) == 0
    assert stable_from(["a", "a", "a"]) == 0
    assert stable_from(["a", "b", "b", "b"]) == 1
    # A decision that comes back counts from its last return, not its first appearance.
    assert stable_from(["b", "a", "b", "b"]) == 2
    assert stable_from(["a", "b", "a", "b"]) == 3


def test_last_quarter_rule():
    # 20 epochs: the last quarter is epochs 15..19; the decision of epoch 14 must survive them.
    assert is_decided(14, 20)
    assert is_decided(0, 20)
    assert not is_decided(15, 20)
    # 4 epochs: the last quarter is epoch 3 alone; it must not change the decision of epoch 2.
    assert is_decided(2, 4) and not is_decided(3, 4)
    # ... but a 1-epoch search has nothing to compare.
    assert not is_decided(0, 1)
    assert not is_decided(None, 10)
    # 10 epochs: ceil(2.5) = 3 epochs, 7..9, after epoch 6.
    assert is_decided(6, 10) and not is_decided(7, 10)


def test_summary_is_one_based_and_counts_changes():
    s = stability_summary(["a", "b", "b", "c", "c", "c", "c", "c"], 8)
    assert s == {"stable_from_epoch": 4, "decided": True, "decision_changes": 2}
    assert not stability_summary(["a", "b", "b", "b", "b", "b", "c", "c"], 8)["decided"]
    assert stability_summary([], 8) == {"stable_from_epoch": None, "decided": False, "decision_changes": 0}
    # Undecided: the decision changed in the last epoch.
    assert not stability_summary(["a"] * 7 + ["b"], 8)["decided"]


def test_digest_ignores_key_order_but_not_values():
    assert decision_digest({"a": 1, "b": [1, 2]}) == decision_digest({"b": [1, 2], "a": 1})
    assert decision_digest({"a": 1}) != decision_digest({"a": 2})
