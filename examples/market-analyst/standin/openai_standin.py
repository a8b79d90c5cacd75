"""STAND-IN for a real LLM: a small OpenAI Chat Completions endpoint on 127.0.0.1 so the
market-analyst demo runs offline. Not a model: it reads the planner's prompt and answers plan JSON
derived from the analyses in it, with token usage and a realistic latency.

Point the planner at a real endpoint (OpenAI, DeepSeek, vLLM, Ollama's OpenAI-compatible API) by
changing only the URL: loom.toml `[llm] base_url` or `OPENAI_BASE_URL`.

Environment:
  STANDIN_PORT        port on 127.0.0.1 (default 18089; 0 picks a free one, printed at start)
  STANDIN_LATENCY_MS  "min,max" answer latency (default "80,250")
  STANDIN_MODE        ok (default) | non_json (HTTP 200 whose body is not JSON) |
                      garbage (a valid completion whose content is not plan JSON) |
                      error (HTTP 500)
  STANDIN_PLAN        a fixed plan JSON to answer every time instead of deriving one (e.g. to
                      show the planner's duplicate-plan check)
Standard library only (asyncio streams), bounded requests, never logs headers (API keys).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
import uuid
from typing import Any, Dict, Optional, Tuple

log = logging.getLogger("openai-standin")

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
INPUT_MARKER = "INPUT:"
MODES = ("ok", "non_json", "garbage", "error")


def _latency_range() -> Tuple[float, float]:
    raw = os.environ.get("STANDIN_LATENCY_MS", "80,250")
    try:
        lo, hi = (float(x) for x in raw.split(","))
    except ValueError:
        raise SystemExit(f"STANDIN_LATENCY_MS={raw!r}: expected 'min,max' in milliseconds") from None
    return max(0.0, min(lo, hi)) / 1000.0, max(lo, hi) / 1000.0


def _tokens(text: str) -> int:
    """A rough token count (≈ 4 characters a token), enough for realistic usage figures."""
    return max(1, (len(text) + 3) // 4)


def plan_from_prompt(prompt: str) -> Dict[str, Any]:
    """The plan a sensible model would give for the analyses in the prompt (the JSON after
    `INPUT:`); HOLD with low confidence when the prompt carries none."""
    data: Dict[str, Any] = {}
    at = prompt.rfind(INPUT_MARKER)
    if at >= 0:
        try:
            parsed = json.loads(prompt[at + len(INPUT_MARKER):].strip())
            if isinstance(parsed, dict):
                data = parsed
        except json.JSONDecodeError:
            data = {}
    analyses = data.get("analyses") if isinstance(data.get("analyses"), dict) else {}

    def score(kind: str) -> float:
        a = analyses.get(kind)
        try:
            return float(a.get("score", 0.0)) if isinstance(a, dict) else 0.0
        except (TypeError, ValueError):
            return 0.0

    trend, sentiment = score("trend"), score("sentiment")
    risk_a = analyses.get("risk") if isinstance(analyses.get("risk"), dict) else {}
    try:
        risk = float(risk_a.get("risk_level", 0.5))
    except (TypeError, ValueError):
        risk = 0.5
    edge = 0.6 * trend + 0.4 * sentiment
    if risk > 0.8:
        action, why = "HOLD", f"risk level {risk:.2f} is too high to act on"
    elif edge > 0.15:
        action, why = "BUY", f"trend {trend:+.2f} and sentiment {sentiment:+.2f} agree upward"
    elif edge < -0.15:
        action, why = "SELL", f"trend {trend:+.2f} and sentiment {sentiment:+.2f} point down"
    else:
        action, why = "HOLD", f"mixed signals (edge {edge:+.2f})"
    missing = data.get("missing") or []
    confidence = min(0.95, 0.35 + abs(edge) * 0.8) * (1.0 - 0.5 * risk) * (0.7 if missing else 1.0)
    if missing:
        why += f"; missing {', '.join(str(m) for m in missing)[:80]}"
    return {"action": action, "confidence": round(max(0.05, confidence), 2), "reasoning": why}


def completion(model: str, prompt: str, content: str) -> Dict[str, Any]:
    prompt_tokens, completion_tokens = _tokens(prompt), _tokens(content)
    return {
        "id": f"chatcmpl-standin-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "loom-standin",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class StandIn:
    def __init__(self, mode: str, latency: Tuple[float, float], fixed_plan: Optional[str] = None) -> None:
        self.mode = mode
        self.fixed_plan = fixed_plan
        self.latency = latency
        self.served = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEADER_BYTES:
                await self._send(writer, 431, {"error": {"message": "request headers too large"}})
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                await self._send(writer, 400, {"error": {"message": "malformed request line"}})
                return
            method, path, _ = parts
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                await self._send(writer, 400, {"error": {"message": "bad Content-Length"}})
                return
            if length < 0 or length > MAX_BODY_BYTES:
                await self._send(writer, 413, {"error": {"message": f"body over {MAX_BODY_BYTES} bytes"}})
                return
            body = await reader.readexactly(length) if length else b""
            keep = headers.get("connection", "").lower() != "close"
            await self._route(writer, method, path.split("?", 1)[0], body, keep)
            if not keep:
                return

    async def _route(self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes, keep: bool) -> None:
        if method == "GET" and path in ("/v1/models", "/models"):
            await self._send(writer, 200, {"object": "list", "data": [{"id": "standin-planner", "object": "model", "owned_by": "loom-standin"}]}, keep)
            return
        if method != "POST" or path not in ("/v1/chat/completions", "/chat/completions"):
            await self._send(writer, 404, {"error": {"message": f"{method} {path[:100]}: not served by the stand-in"}}, keep)
            return
        try:
            req = json.loads(body)
            messages = req["messages"]
            model = str(req.get("model") or "standin-planner")[:100]
            prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            await self._send(writer, 400, {"error": {"message": "expected a JSON body with a messages list", "type": "invalid_request_error"}}, keep)
            return
        await asyncio.sleep(random.uniform(*self.latency))
        self.served += 1
        if self.mode == "error":
            await self._send(writer, 500, {"error": {"message": "stand-in configured to fail (STANDIN_MODE=error)", "type": "server_error"}}, keep)
        elif self.mode == "non_json":
            await self._send_raw(writer, 200, b"<html>upstream proxy error</html>", "application/json", keep)
        elif self.mode == "garbage":
            await self._send(writer, 200, completion(model, prompt, "I think you should probably buy, or maybe not."), keep)
        else:
            content = self.fixed_plan or json.dumps(plan_from_prompt(prompt))
            await self._send(writer, 200, completion(model, prompt, content), keep)
        log.info("answered %s (mode=%s, served=%d)", model, self.mode, self.served)

    async def _send(self, writer: asyncio.StreamWriter, status: int, obj: Dict[str, Any], keep: bool = False) -> None:
        await self._send_raw(writer, status, json.dumps(obj).encode("utf-8"), "application/json", keep)

    async def _send_raw(self, writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, keep: bool) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error"}.get(status, "Status")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n")
        writer.write(head.encode("latin-1") + body)
        await writer.drain()


async def main() -> None:
    mode = os.environ.get("STANDIN_MODE", "ok").strip().lower()
    if mode not in MODES:
        raise SystemExit(f"STANDIN_MODE={mode!r}: expected one of {', '.join(MODES)}")
    try:
        port = int(os.environ.get("STANDIN_PORT", "18089"))
    except ValueError:
        raise SystemExit("STANDIN_PORT must be a port number") from None
    fixed = os.environ.get("STANDIN_PLAN") or None
    standin = StandIn(mode, _latency_range(), fixed)
    server = await asyncio.start_server(standin.handle, "127.0.0.1", port, limit=MAX_HEADER_BYTES)
    bound = server.sockets[0].getsockname()[1]
    log.info("OpenAI-compatible STAND-IN (not a model) listening on http://127.0.0.1:%d/v1 (mode=%s)", bound, mode)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
