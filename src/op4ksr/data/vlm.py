"""Stage (iii) of curation: ask a vision-language model, behind an OpenAI-compatible chat
endpoint (for example vLLM serving Qwen3-VL), to rate texture richness and clarity.

Only the standard library is used (``urllib``), so the core install stays lean. Each request
has a time-out; failed or unparseable answers are retried; a thread pool bounds how many
requests are in flight at once.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

DEFAULT_PROMPT = (
    "You are assessing photographs for a super-resolution training set. Rate this image on two "
    "criteria, each an integer from 0 (worst) to 10 (best): texture_richness (amount of fine, "
    "natural detail and texture) and clarity (sharpness, absence of blur, noise and compression "
    "artefacts). Reply with only a JSON object: "
    '{"texture_richness": <0-10>, "clarity": <0-10>}'
)
SCORE_KEYS = ("texture_richness", "clarity")


@dataclass(frozen=True)
class VLMConfig:
    """``url`` is the API base, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended)."""

    url: str
    model: str = "Qwen/Qwen3-VL-8B-Instruct"
    prompt: str = DEFAULT_PROMPT
    timeout_s: float = 60.0
    retries: int = 2  # extra attempts after the first
    backoff_s: float = 1.0  # doubled after each failed attempt
    concurrency: int = 4
    max_side: int = 1024  # images are downscaled before upload: the VLM sees ~1 MP anyway
    min_score: float = 6.0  # mean of the two scores needed to keep an image
    api_key: str | None = None


@dataclass(frozen=True)
class VLMResult:
    scores: dict[str, float] | None
    error: str | None
    attempts: int


class VLMAnswerError(ValueError):
    """The model replied, but not with the two scores in range."""


def encode_image(img: Image.Image, max_side: int) -> str:
    """A JPEG data URL of ``img`` with its longer side at most ``max_side``."""
    img = img.convert("RGB")
    if max(img.size) > max_side:
        ratio = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * ratio)), max(1, round(img.height * ratio))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_scores(content: str) -> dict[str, float]:
    """Pull ``{"texture_richness": x, "clarity": y}`` out of a reply (models wrap JSON in prose or fences)."""
    for match in re.finditer(r"\{[^{}]*\}", content, flags=re.S):
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or not all(k in obj for k in SCORE_KEYS):
            continue
        scores = {}
        for key in SCORE_KEYS:
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
                raise VLMAnswerError(f"{key}={value!r} is not a number in [0, 10]")
            scores[key] = float(value)
        return scores
    raise VLMAnswerError(f"no JSON with {', '.join(SCORE_KEYS)} in answer {content[:80]!r}")


def _request(cfg: VLMConfig, data_url: str) -> str:
    body = {
        "model": cfg.model,
        "temperature": 0,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": cfg.prompt},
                ],
            }
        ],
    }
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    req = urllib.request.Request(
        cfg.url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
        reply = json.loads(resp.read().decode("utf-8"))
    try:
        return str(reply["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        raise VLMAnswerError("reply has no choices[0].message.content") from None


def assess(cfg: VLMConfig, img: Image.Image, sleep: Callable[[float], None] = time.sleep) -> VLMResult:
    """Rate one image, retrying time-outs, HTTP errors and garbage answers; never raises."""
    data_url = encode_image(img, cfg.max_side)
    error = "not attempted"
    for attempt in range(1, cfg.retries + 2):
        try:
            return VLMResult(parse_scores(_request(cfg, data_url)), None, attempt)
        except VLMAnswerError as exc:
            error = f"bad answer: {exc}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (TimeoutError, urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            reason = getattr(exc, "reason", exc)
            error = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else f"{reason}"
        if attempt <= cfg.retries:
            sleep(cfg.backoff_s * 2 ** (attempt - 1))
    return VLMResult(None, f"{error} (after {cfg.retries + 1} attempts)", cfg.retries + 1)


def assess_many(
    cfg: VLMConfig, items: Iterable[tuple[str, Callable[[], Image.Image]]]
) -> Iterator[tuple[str, VLMResult]]:
    """Rate many images with at most ``cfg.concurrency`` requests in flight; yields as they finish.

    ``items`` are ``(key, load)`` pairs; ``load`` runs in the worker thread so only
    ``concurrency`` decoded images are held at a time.
    """

    def run(key: str, load: Callable[[], Image.Image]) -> tuple[str, VLMResult]:
        try:
            img = load()
        except Exception as exc:  # noqa: BLE001 - a file that changed under us is one failed row
            return key, VLMResult(None, f"cannot read image: {exc}", 0)
        return key, assess(cfg, img)

    with ThreadPoolExecutor(max_workers=max(1, cfg.concurrency)) as pool:
        futures = [pool.submit(run, key, load) for key, load in items]
        for fut in futures:
            yield fut.result()
