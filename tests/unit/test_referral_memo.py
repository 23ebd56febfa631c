"""The referral depth memo: a FIFO bounded by count (oldest memo first out, a user memoised
again keeping their place), and checkpoints that held it in a plain dict resume alike."""

import pickle
from collections import OrderedDict

from features.referral import DepthMemo


def test_the_oldest_memo_goes_first_and_a_repeat_keeps_its_place() -> None:
    memo = DepthMemo(limit=3)
    for n, user in enumerate(("a", "b", "c")):
        memo.put(user, signup_ts=n, depth=n + 1)
    memo.put("a", signup_ts=10, depth=7)  # re-signed up: new memo, same place
    memo.put("d", signup_ts=3, depth=1)
    assert list(memo.depths) == ["b", "c", "d"] and memo.get("a", 10) is None
    memo.put("e", signup_ts=4, depth=2)
    assert list(memo.depths) == ["c", "d", "e"]
    assert memo.get("c", 2) == 3 and memo.get("c", 99) is None


def test_a_memo_checkpointed_as_a_plain_dict_resumes_as_a_fifo() -> None:
    memo = DepthMemo(limit=2)
    memo.put("a", signup_ts=0, depth=1)
    memo.put("b", signup_ts=1, depth=2)
    memo.depths = dict(memo.depths)  # type: ignore[assignment]  # as it was pickled before
    restored = pickle.loads(pickle.dumps(memo))
    assert isinstance(restored.depths, OrderedDict) and restored.limit == 2
    restored.put("c", signup_ts=2, depth=1)
    assert list(restored.depths.items()) == [("b", (1, 2)), ("c", (2, 1))]
