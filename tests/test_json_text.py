"""The encoders built once write what the ``json.dumps`` calls they stand for write."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from pulse_core import json_text

VALUES: list[Any] = [
    {},
    {"n": 1, "text": "hello"},
    {"b": [1, 2.5, None, True], "a": {"z": "é ✓ \u2028 \ud800", "y": -0.0}},
    {"nan": float("nan"), "inf": float("inf"), 3: "int key"},
    [{"deep": [[[["x"]]]]}],
    "a string",
]


@pytest.mark.parametrize("value", VALUES)
def test_each_encoder_writes_its_json_dumps_text(value: Any) -> None:
    assert json_text.compact(value) == json.dumps(value, separators=(",", ":"))
    assert json_text.unicode(value) == json.dumps(value, ensure_ascii=False)
    if not (isinstance(value, dict) and 3 in value):  # sort_keys of mixed key types fails in both
        expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert json_text.canonical(value) == expected


def test_an_encoder_refuses_what_json_dumps_refuses() -> None:
    with pytest.raises(TypeError):
        json_text.compact({"when": object()})


def test_threads_sharing_an_encoder_each_get_their_own_text() -> None:
    # when eight threads encode different values with the one encoder at once
    results: dict[int, list[str]] = {}

    def encode(n: int) -> None:
        results[n] = [json_text.compact({"n": n, "items": list(range(n))}) for _ in range(500)]

    threads = [threading.Thread(target=encode, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then each got its own value's text every time
    for n, texts in results.items():
        assert set(texts) == {json.dumps({"n": n, "items": list(range(n))}, separators=(",", ":"))}
