from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from op4ksr.data.vlm import VLMAnswerError, VLMConfig, assess, assess_many, parse_scores

GOOD = 'Sure! ```json\n{"texture_richness": 8, "clarity": 7.5}\n```'


def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))


def no_sleep(_: float) -> None:
    pass


def test_parse_scores() -> None:
    assert parse_scores(GOOD) == {"texture_richness": 8.0, "clarity": 7.5}
    with pytest.raises(VLMAnswerError, match="no JSON"):
        parse_scores("looks lovely")
    with pytest.raises(VLMAnswerError, match="clarity=12"):
        parse_scores('{"texture_richness": 3, "clarity": 12}')
    with pytest.raises(VLMAnswerError):
        parse_scores('{"texture_richness": "high", "clarity": 5}')


def test_good_answer_and_request_shape(vlm_server) -> None:
    with vlm_server(lambda n: (GOOD, 0)) as (url, server):
        result = assess(VLMConfig(url=url, model="qwen3-vl-test", prompt="rate it"), image())
    assert result.scores == {"texture_richness": 8.0, "clarity": 7.5} and result.error is None
    body = server.requests[0]
    assert body["model"] == "qwen3-vl-test"
    content = body["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert content[1]["text"] == "rate it"


def test_garbage_then_good_is_retried(vlm_server) -> None:
    with vlm_server(lambda n: ("no idea", 0) if n == 0 else (GOOD, 0)) as (url, server):
        result = assess(VLMConfig(url=url, retries=2), image(), sleep=no_sleep)
    assert result.attempts == 2 and result.scores is not None and len(server.requests) == 2


def test_garbage_forever_is_an_error_not_a_crash(vlm_server) -> None:
    with vlm_server(lambda n: ('{"texture_richness": 99, "clarity": 1}', 0)) as (url, server):
        result = assess(VLMConfig(url=url, retries=1), image(), sleep=no_sleep)
    assert result.scores is None and "bad answer" in result.error and "2 attempts" in result.error
    assert len(server.requests) == 2


def test_timeouts_are_retried_then_reported(vlm_server) -> None:
    with vlm_server(lambda n: (GOOD, 1.0)) as (url, server):
        start = time.monotonic()
        result = assess(VLMConfig(url=url, timeout_s=0.2, retries=1), image(), sleep=no_sleep)
        elapsed = time.monotonic() - start
    assert result.scores is None and "timed out" in result.error
    assert len(server.requests) == 2 and elapsed < 0.9


def test_server_down_is_an_error(vlm_server) -> None:
    with vlm_server(lambda n: (GOOD, 0)) as (url, _):
        pass  # server closed on exit
    result = assess(VLMConfig(url=url, retries=0, timeout_s=1), image(), sleep=no_sleep)
    assert result.scores is None and result.error


def test_concurrency_limit_is_respected(vlm_server) -> None:
    with vlm_server(lambda n: (GOOD, 0.15)) as (url, server):
        cfg = VLMConfig(url=url, concurrency=3)
        results = dict(assess_many(cfg, [(f"k{i}", image) for i in range(9)]))
    assert len(results) == 9 and all(r.scores for r in results.values())
    assert server.max_in_flight == 3
