"""Reads spans back from the sidecar's `file` exporter (OTLP/JSON, one export request per line) or
from a Jaeger api_v3 query API (the sidecar's `trace_store` exporter, or a real Jaeger) and
renders them as trace trees: the `loom traces` command and the demo runner's live view."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, TextIO

_KIND_NAMES = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _hex_id(value: object) -> str:
    """OTLP/JSON ids are hex; tolerate base64 (protobuf-JSON default) from other writers."""
    if not value:
        return ""
    text = str(value)
    if all(c in "0123456789abcdefABCDEF" for c in text) and len(text) in (16, 32):
        return text.lower()
    try:
        return base64.b64decode(text).hex()
    except (ValueError, TypeError):
        return text


def _any_value(v: dict) -> object:
    if not isinstance(v, dict):
        return v
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_any_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: _any_value(kv.get("value", {})) for kv in v["kvlistValue"].get("values", [])}
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def _attrs(items: Optional[list]) -> Dict[str, object]:
    return {kv["key"]: _any_value(kv.get("value", {})) for kv in (items or [])}


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: Dict[str, object]
    resource: Dict[str, object]
    status_code: int = 0
    scope: str = ""

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", "?"))

    @property
    def kind_name(self) -> str:
        return _KIND_NAMES.get(self.kind, str(self.kind))

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6


def spans_from_request(request: dict) -> Iterator[Span]:
    """Yields every span of one OTLP/JSON ExportTraceServiceRequest."""
    for rs in request.get("resourceSpans", []):
        resource = _attrs(rs.get("resource", {}).get("attributes"))
        for ss in rs.get("scopeSpans", []):
            scope = ss.get("scope", {}).get("name", "")
            for s in ss.get("spans", []):
                yield Span(
                    trace_id=_hex_id(s.get("traceId")),
                    span_id=_hex_id(s.get("spanId")),
                    parent_span_id=_hex_id(s.get("parentSpanId")),
                    name=s.get("name", ""),
                    kind=int(s.get("kind", 0)),
                    start_ns=int(s.get("startTimeUnixNano", 0)),
                    end_ns=int(s.get("endTimeUnixNano", 0)),
                    attributes=_attrs(s.get("attributes")),
                    resource=resource,
                    status_code=int(s.get("status", {}).get("code", 0)),
                    scope=scope,
                )


def read_spans(path: str) -> List[Span]:
    """All spans in a file-exporter file; a torn last line (writer mid-flush) is skipped."""
    spans: List[Span] = []
    try:
        with open(path, "r", encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    spans.extend(spans_from_request(json.loads(line)))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return []
    return spans


def group_by_trace(spans: Iterable[Span]) -> Dict[str, List[Span]]:
    traces: Dict[str, List[Span]] = {}
    for s in spans:
        traces.setdefault(s.trace_id, []).append(s)
    for v in traces.values():
        v.sort(key=lambda s: s.start_ns)
    return traces


def _label(s: Span) -> str:
    agent = s.attributes.get("loom.agent.id") or s.resource.get("loom.agent.id")
    who = f"{s.service}" + (f", agent={agent}" if agent and f"agent-{agent}" != s.service else "")
    topic = s.attributes.get("loom.topic")
    extra = f" topic={topic}" if topic else ""
    err = " ERROR" if s.status_code == 2 else ""
    return f"{s.name} [{s.kind_name}] ({who}){extra} {s.duration_ms:.2f}ms{err}"


def render_trace(trace_id: str, spans: List[Span], jaeger_ui: Optional[str] = None) -> str:
    """A trace as an indented tree; spans whose parent never arrived are marked as orphans."""
    by_id = {s.span_id: s for s in spans}
    children: Dict[str, List[Span]] = {}
    roots: List[Span] = []
    for s in spans:
        if s.parent_span_id and s.parent_span_id in by_id:
            children.setdefault(s.parent_span_id, []).append(s)
        else:
            roots.append(s)
    lines = [f"trace {trace_id}  ({len(spans)} spans)"]
    if jaeger_ui:
        lines[0] += f"  {jaeger_ui.rstrip('/')}/trace/{trace_id}"

    def walk(s: Span, depth: int) -> None:
        orphan = " (ORPHAN: parent missing)" if depth == 0 and s.parent_span_id else ""
        lines.append("  " + "  " * depth + ("└─ " if depth else "") + _label(s) + orphan)
        for c in sorted(children.get(s.span_id, []), key=lambda x: x.start_ns):
            walk(c, depth + 1)

    for r in roots:
        walk(r, 0)
    return "\n".join(lines)


def chain(spans: List[Span]) -> str:
    """The one-line `a → b → c` form of a linear trace (first child at each level)."""
    by_parent: Dict[str, List[Span]] = {}
    ids = {s.span_id for s in spans}
    for s in spans:
        by_parent.setdefault(s.parent_span_id if s.parent_span_id in ids else "", []).append(s)
    out: List[str] = []
    level = sorted(by_parent.get("", []), key=lambda s: s.start_ns)
    while level:
        s = level[0]
        agent = s.attributes.get("loom.agent.id")
        out.append(f"{s.name}({agent})" if s.name == "agent.on_event" and agent else s.name)
        level = sorted(by_parent.get(s.span_id, []), key=lambda x: x.start_ns)
    return " → ".join(out)


class TraceFollower:
    """Tails a file-exporter file and yields traces once no new span arrived for `quiet_s`."""

    def __init__(self, path: str, quiet_s: float = 1.5) -> None:
        self.path = path
        self.quiet_s = quiet_s
        self._pos = 0
        self._partial = ""
        self._pending: Dict[str, List[Span]] = {}
        self._last_seen: Dict[str, float] = {}

    def poll(self) -> List[tuple]:
        now = time.monotonic()
        try:
            with open(self.path, "r", encoding="utf-8") as fh:
                fh.seek(self._pos)
                data = fh.read()
                self._pos = fh.tell()
        except FileNotFoundError:
            data = ""
        if data:
            data = self._partial + data
            lines = data.split("\n")
            self._partial = lines.pop()
            for line in lines:
                if not line.strip():
                    continue
                try:
                    req = json.loads(line)
                except json.JSONDecodeError:
                    continue
                for s in spans_from_request(req):
                    self._pending.setdefault(s.trace_id, []).append(s)
                    self._last_seen[s.trace_id] = now
        done = []
        for tid, seen in list(self._last_seen.items()):
            if now - seen >= self.quiet_s:
                spans = sorted(self._pending.pop(tid), key=lambda s: s.start_ns)
                del self._last_seen[tid]
                done.append((tid, spans))
        return done


class QueryError(Exception):
    """The query API could not be reached or answered with an error."""


def _api_get(url: str, timeout: float) -> Optional[dict]:
    """GET a JSON document; None on 404 (Jaeger's "No traces found")."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        try:
            message = json.loads(exc.read().decode("utf-8"))["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise QueryError(f"{url}: HTTP {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise QueryError(f"{url}: {exc}") from None


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def read_spans_from_api(base_url: str, trace_id: Optional[str] = None, limit: int = 20,
                        lookback_s: float = 3600.0, timeout: float = 10.0) -> List[Span]:
    """Spans from a Jaeger api_v3 query API: one trace by id, or the newest `limit` traces of
    every service that started within `lookback_s` (searched per service, as Jaeger requires)."""
    from urllib.parse import quote, urlencode
    base = base_url.rstrip("/")
    docs: List[dict] = []
    if trace_id:
        doc = _api_get(f"{base}/api/v3/traces/{quote(trace_id.lower())}", timeout)
        docs = [doc] if doc else []
    else:
        services = (_api_get(f"{base}/api/v3/services", timeout) or {}).get("services") or []
        now = time.time()
        for service in services:
            query = urlencode({
                "query.service_name": service,
                "query.start_time_min": _rfc3339(now - lookback_s),
                "query.start_time_max": _rfc3339(now + 60),
                "query.num_traces": max(1, limit),
            })
            doc = _api_get(f"{base}/api/v3/traces?{query}", timeout)
            if doc:
                docs.append(doc)
    seen = set()
    spans: List[Span] = []
    for doc in docs:
        # One trace may come back once per service that took part in it.
        for s in spans_from_request(doc.get("result") or {}):
            if (s.trace_id, s.span_id) not in seen:
                seen.add((s.trace_id, s.span_id))
                spans.append(s)
    return spans


def print_traces(path: Optional[str], out: TextIO = sys.stdout, trace_id: Optional[str] = None,
                 limit: int = 20, jaeger_ui: Optional[str] = None, query_url: Optional[str] = None) -> int:
    """Prints the newest `limit` traces from the file at `path`, or from the query API at
    `query_url` when given."""
    if query_url:
        try:
            spans = read_spans_from_api(query_url, trace_id=trace_id, limit=limit)
        except QueryError as exc:
            print(f"loom traces: {exc}", file=sys.stderr)
            return 2
        source = query_url
    else:
        spans = read_spans(path or "")
        source = path
    traces = group_by_trace(spans)
    if trace_id:
        traces = {k: v for k, v in traces.items() if k == trace_id.lower()}
    if not traces:
        print(f"no spans in {source}", file=sys.stderr)
        return 1
    ordered = sorted(traces.items(), key=lambda kv: kv[1][0].start_ns)[-limit:]
    for tid, spans in ordered:
        print(render_trace(tid, spans, jaeger_ui or os.environ.get("JAEGER_UI_URL")), file=out)
        print("  chain: " + chain(spans), file=out)
        print(file=out)
    return 0
