"""A local OpenAI-compatible chat-completions server on 127.0.0.1 for the HTTP backend's tests.

It answers deterministically from the prompt, the way a well-behaved model would, and misbehaves on
request: a title holding [500] always gets HTTP 500, [429] gets one 429 before an answer, [garbage]
gets a body that is not JSON, [slow] answers after `slow_s` seconds, [prose] answers without JSON.
Images (data: URLs) are decoded and described by their mean colour, which proves they arrived.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

GENERIC = "good quality product"


def _title(text: str) -> str:
    match = re.search(r"(?:Title|Item|listed as): (.*)", text)
    return match.group(1).strip() if match else ""


def _interest(title: str) -> str:
    return title.split(" for ", 1)[1].strip() if " for " in title else title.lower()


def judge_probability(content: str) -> float:
    """The fake judge's p(good): high for the interest its item's title names, low for anything else."""
    descriptor = re.search(r"Descriptor: (.*)", content).group(1).strip()
    return 0.9 if descriptor == _interest(_title(content)) else 0.15


def logprobs(messages: list[dict], reply: str) -> dict:
    """OpenAI-style `logprobs` of a reply: one step per reply character, the judge's digit with both digits' log-probabilities."""
    content = messages[-1]["content"]
    steps = []
    for char in reply:
        top = [{"token": char, "logprob": 0.0}]
        if char in "01" and isinstance(content, str) and "Descriptor:" in content:
            p = judge_probability(content)
            top = [{"token": "1", "logprob": math.log(p)}, {"token": "0", "logprob": math.log(1 - p)}]
        steps.append({"token": char, "logprob": top[0]["logprob"], "top_logprobs": top})
    return {"content": steps}


def answer(messages: list[dict]) -> str:
    """What the fake model says to a chat; the last user turn decides."""
    content = messages[-1]["content"]
    if isinstance(content, list):
        url = next(p["image_url"]["url"] for p in content if p.get("type") == "image_url")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
        r, g, b = (round(sum(c) / len(c)) for c in zip(*image.getdata()))
        return f"A product photo of {image.width}x{image.height} pixels, mostly rgb({r},{g},{b})."
    if "Descriptor:" in content:
        return json.dumps({"label": int(judge_probability(content) >= 0.5)})
    if "A shopper bought" in content:
        titles = re.findall(r"^- (.*)$", content, flags=re.M)
        return json.dumps({"long_term": [_interest(titles[0])], "short_term": [_interest(titles[-1])]})
    title = _title(content)
    if "[prose]" in title:
        return "This item is great for many people."
    descriptors = [{"descriptor": _interest(title), "confidence": 0.8}, {"descriptor": GENERIC, "confidence": 0.3}]
    return "Reasoning: people buy it for what the title says.\n" + json.dumps({"descriptors": descriptors})


class ChatServer:
    """Start with `with ChatServer() as server:`; `server.url` is the base URL ending in /v1."""

    def __init__(self, slow_s: float = 2.0):
        self.slow_s, self.requests, self.auth, self.lock = slow_s, [], set(), threading.Lock()
        self.seen_429: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except BrokenPipeError:
                    pass  # the client gave up waiting (the timeout tests do that on purpose)

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = json.dumps(payload["messages"][-1]["content"])
                with outer.lock:
                    outer.requests.append(payload)
                    outer.auth.add(self.headers.get("Authorization"))
                    first_429 = "[429]" in text and text not in outer.seen_429
                    outer.seen_429.add(text)
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, b'{"error": "not found"}')
                if "[500]" in text:
                    return self._send(500, b'{"error": "internal"}')
                if first_429:
                    return self._send(429, b'{"error": "rate limited"}')
                if "[garbage]" in text:
                    return self._send(200, b"<html>upstream proxy error</html>", "text/html")
                if "[slow]" in text:
                    time.sleep(outer.slow_s)
                reply = answer(payload["messages"])
                choice = {"message": {"role": "assistant", "content": reply}}
                if payload.get("logprobs"):
                    choice["logprobs"] = logprobs(payload["messages"], reply)
                body = {"choices": [choice],
                        "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": len(reply) // 4}}
                self._send(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "ChatServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
