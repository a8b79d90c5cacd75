"""The dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
Selenium with no browser download), with examples/trace-test running: the live event stream,
a trace's timeline (9 spans, nested, with service names), the Jaeger link, and hostile agent
strings shown as text with no script run.

The timeline reads traces from a Jaeger api_v3 query service: the sidecar's `trace_store`
(which `loom run` finds and hands to the bridge), or, with a sidecar config without one, a
stand-in here that answers api_v3 from the sidecar's file exporter output (the same spans)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from loom._runner import Project, Runner
from e2e_harness import EXPECTED_CHAIN, PROJECT, Run, chain_problems, wait_until

pytestmark = pytest.mark.timeout(240)

CHROMIUM = os.environ.get("LOOM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LOOM_CHROMEDRIVER", "/usr/bin/chromedriver")
JAEGER_UI = "http://jaeger.example:16686"
REPO = Path(__file__).resolve().parents[2]
SHOTS = os.environ.get("LOOM_DASHBOARD_SCREENSHOTS")  # a directory: save overview + timeline
# The demo's sidecar keeps recent traces (trace_store) and `loom run` points the bridge at it.
HAS_TRACE_STORE = "trace_store" in (PROJECT / "sidecar.yaml").read_text()


def _missing(why: str) -> None:
    # CI installs the browser (scripts/setup-browser.sh): there a missing one is a failure.
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must run the browser tests: scripts/setup-browser.sh)", pytrace=False)
    pytest.skip(f"{why}: run scripts/setup-browser.sh (as root) to install chromium + chromium-driver",
                allow_module_level=True)


if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    _missing(f"no {CHROMIUM} / {CHROMEDRIVER}")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - requirements-dev.txt pins selenium
    _missing("selenium is not installed")


def serve_query(answer: Callable[[str], Optional[bytes]]) -> Tuple[ThreadingHTTPServer, str]:
    """A stand-in api_v3 query service on a free loopback port, and its URL: `GET path` gets
    `answer(path)` as JSON, or api_v3's 404 when that is None."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output quiet
            pass

        def do_GET(self) -> None:
            body = answer(self.path)
            self.send_response(404 if body is None else 200)
            if body is None:
                body = b'{"error":{"code":5,"message":"trace not found"}}'
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class FileBackedQuery:
    """A stand-in Jaeger api_v3 query service over the sidecar's file exporter output:
    `GET /api/v3/traces/{id}` → `{"result": {"resourceSpans": [...]}}` (OTLP JSON, hex ids)."""

    def __init__(self, trace_file: Path) -> None:
        self.trace_file = trace_file
        self.server, self.url = serve_query(self.answer)

    def answer(self, path: str) -> Optional[bytes]:
        m = re.fullmatch(r"/api/v3/traces/([0-9a-f]{32})", path)
        body = self.trace(m.group(1)) if m else None
        return None if body is None else json.dumps({"result": {"resourceSpans": body}}).encode()

    def trace(self, trace_id: str) -> Optional[List[dict]]:
        out: List[dict] = []
        try:
            lines = self.trace_file.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            for rs in doc.get("resourceSpans", []):
                scopes = []
                for ss in rs.get("scopeSpans", []):
                    spans = [s for s in ss.get("spans", []) if str(s.get("traceId", "")).lower() == trace_id]
                    if spans:
                        scopes.append({**ss, "spans": spans})
                if scopes:
                    out.append({**rs, "scopeSpans": scopes})
        return out or None

    def close(self) -> None:
        self.server.shutdown()


def _driver() -> "webdriver.Chrome":
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download anything
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1500,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


class Dash:
    def __init__(self, run: Run, driver, url: str) -> None:
        self.run, self.driver, self.url = run, driver, url

    def wait(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                got = pred()
                if got:
                    return got
            except Exception as e:  # stale elements while the page re-renders
                last = e
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


@pytest.fixture
def dash(tmp_path: Path) -> Iterator[Dash]:
    trace_file = tmp_path / "spans.jsonl"
    query = FileBackedQuery(trace_file)
    lines: List[str] = []
    lock = threading.Lock()

    def out(line: str) -> None:
        with lock:
            lines.append(line)

    env = {"RUST_LOG": "warn", "LOOM_JAEGER_UI_URL": JAEGER_UI}
    if not HAS_TRACE_STORE:
        env["LOOM_TRACE_QUERY_URL"] = query.url
    runner = Runner(Project.load(PROJECT), auto_ports=True, out=out, trace_file=trace_file,
                    agent_env={"sensor": {"SENSOR_INTERVAL_S": "1"}}, env=env)
    driver = None
    try:
        runner.start()
        if HAS_TRACE_STORE:
            assert runner.trace_query_url and not runner.trace_query_url.startswith(query.url), \
                "loom run points the dashboard at the sidecar's trace_store"
        assert runner.dashboard_url, "the runner reports the dashboard URL"
        assert any(l.startswith("Dashboard: http://127.0.0.1:") for l in lines), "and prints it"
        driver = _driver()
        yield Dash(Run(runner, lines), driver, runner.dashboard_url)
    finally:
        if driver:
            driver.quit()
        runner.stop()
        query.close()


def _rows(d: Dash, css: str):
    return d.driver.find_elements(By.CSS_SELECTOR, css)


def test_event_stream_grows_and_links_to_timeline_and_jaeger(dash: Dash) -> None:
    d = dash
    d.driver.get(d.url + "/#/events")
    first = d.wait(lambda: len(_rows(d, "tr.event-row")) >= 2 and len(_rows(d, "tr.event-row")), 30,
                   "events in the stream")
    # The stream grows without a reload: the same page object, more rows.
    marker = d.driver.execute_script("window.__same_page = 1; return 1")
    assert marker == 1
    d.wait(lambda: len(_rows(d, "tr.event-row")) >= first + 2, 30, "new rows without a reload")
    assert d.driver.execute_script("return window.__same_page") == 1, "the page did not reload"

    row = _rows(d, "tr.event-row")[0]
    topic = row.find_element(By.CSS_SELECTOR, "td.topic").text
    assert topic in ("sensor.data", "processed.data")
    assert row.find_element(By.CSS_SELECTOR, "td.sender").text in ("sensor", "processor")
    trace_id = row.get_attribute("data-trace-id")
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    jaeger = row.find_element(By.CSS_SELECTOR, "a.jaeger-link").get_attribute("href")
    assert re.fullmatch(re.escape(JAEGER_UI) + r"/trace/[0-9a-f]{32}", jaeger), jaeger
    assert jaeger.endswith(trace_id)

    if SHOTS:
        time.sleep(1)
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        d.driver.save_screenshot(str(Path(SHOTS) / "dashboard-overview.png"))


def test_timeline_shows_the_nine_spans_nested_with_services(dash: Dash) -> None:
    d = dash
    run = d.run
    # A trace the sensor finished at least a few seconds ago, complete in the exported spans.
    def complete_trace() -> Optional[str]:
        traces = run.traces()
        done = [t for t in run.sensor_trace_ids() if t in traces and not chain_problems(traces[t])]
        return done[0] if done else None
    trace_id = d.wait(complete_trace, 60, "a complete trace exported")

    d.driver.get(d.url + "/#/events")
    # Click its event in the stream, as a user would (it is in the backlog or arrives live).
    row = d.wait(lambda: next((r for r in _rows(d, "tr.event-row") if r.get_attribute("data-trace-id") == trace_id), None),
                 30, f"an event of trace {trace_id}")
    row.find_element(By.CSS_SELECTOR, "td.topic").click()
    d.wait(lambda: d.driver.current_url.endswith("#/trace/" + trace_id), 10, "the timeline route")
    spans = d.wait(lambda: (lambda r: r if len(r) == 9 else None)(_rows(d, "#span-rows .span-row")), 30,
                   "9 span rows")
    got = [(r.get_attribute("data-name"), r.get_attribute("data-service"), int(r.get_attribute("data-depth")))
           for r in spans]
    # One chain: each span the child of the one above it, in causal order.
    assert got == [(name, svc, depth) for depth, (name, svc) in enumerate(EXPECTED_CHAIN)], got
    # Service names are on the page as text, one colour per service.
    assert [r.find_element(By.CSS_SELECTOR, ".svc").text for r in spans] == [svc for _, svc in EXPECTED_CHAIN]
    colours = {}
    for r, (_, svc) in zip(spans, EXPECTED_CHAIN):
        colours.setdefault(svc, set()).add(r.find_element(By.CSS_SELECTOR, ".bar").value_of_css_property("background-color"))
    assert all(len(c) == 1 for c in colours.values()) and len({next(iter(c)) for c in colours.values()}) == len({svc for _, svc in EXPECTED_CHAIN})
    # Bars are to scale: each starts no earlier than its parent's.
    lefts = [r.find_element(By.CSS_SELECTOR, ".bar").rect["x"] for r in spans]
    assert all(b >= a - 1 for a, b in zip(lefts, lefts[1:])), lefts
    jaeger = d.driver.find_element(By.ID, "timeline-jaeger").get_attribute("href")
    assert jaeger == f"{JAEGER_UI}/trace/{trace_id}"

    # The side panel shows the clicked span's attributes.
    spans[4].click()
    detail = d.wait(lambda: d.driver.find_element(By.ID, "span-detail").text, 10, "span details")
    assert "agent.on_event" in detail and "agent-processor" in detail and "loom.agent.id" in detail

    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        d.driver.save_screenshot(str(Path(SHOTS) / "dashboard-timeline.png"))


class BackgroundLoop:
    """An asyncio loop on its own thread, for driving an SDK agent from a sync test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_hostile_agent_id_and_topic_show_as_text_and_run_nothing(dash: Dash) -> None:
    d = dash
    from loom import Agent  # the SDK under test, registering through the same bridge

    hostile_id = "<img/src=x/onerror=window.__pwned=1>"
    hostile_topic = "</script><script>window.__pwned=2</script>"
    payload = {"html": "<img src=x onerror=window.__pwned=3>"}
    d.driver.get(d.url + "/#/topology")
    d.wait(lambda: _rows(d, "tr.agent-row"), 30, "the agents table")

    bg = BackgroundLoop()
    agent = Agent(hostile_id, topics=[hostile_topic], bridge_addr=f"http://{d.run.runner.bridge_address}",
                  telemetry=False)
    bg.run(agent.start())
    try:
        def hostile_row():
            return next((r for r in _rows(d, "tr.agent-row")
                         if r.find_element(By.CSS_SELECTOR, ".agent-id").text == hostile_id), None)
        row = d.wait(hostile_row, 30, "the hostile agent listed")
        # (the SDK adds its reply topic after the agent's own subscriptions)
        assert row.find_element(By.CSS_SELECTOR, ".agent-topics").text.split(", ")[0] == hostile_topic
        d.driver.get(d.url + "/#/events")
        d.wait(lambda: _rows(d, "tr.event-row"), 30, "the event stream")
        bg.run(agent.context.emit(hostile_topic, payload, event_type="<b>t</b>"))
        ev = d.wait(lambda: next((r for r in _rows(d, "tr.event-row") if r.get_attribute("data-topic") == hostile_topic), None),
                    30, "the hostile event in the stream")
        assert ev.find_element(By.CSS_SELECTOR, "td.topic").text == hostile_topic
        assert ev.find_element(By.CSS_SELECTOR, "td.sender").text == hostile_id
        assert ev.find_element(By.CSS_SELECTOR, "td.etype").text == "<b>t</b>"
        assert "<img src=x onerror=window.__pwned=3>" in ev.find_element(By.CSS_SELECTOR, "td.payload").text
        d.driver.get(d.url + "/#/topology")
        d.wait(lambda: any(t.text.startswith(hostile_id[:20]) for t in d.driver.find_elements(By.CSS_SELECTOR, "#topo-graph text")),
               30, "the hostile agent in the graph")
        d.wait(lambda: hostile_row(), 30, "the hostile agent listed again")
        # No element was made from the strings, and none of the payloads ran.
        assert d.driver.find_elements(By.CSS_SELECTOR, "main img, main script, #topo-graph foreignObject") == []
        assert d.driver.execute_script("return typeof window.__pwned") == "undefined"
    finally:
        bg.run(agent.stop())
        bg.close()


class FixedQuery:
    """A stand-in api_v3 query service holding one hand-made trace: a fan-in whose consumer span
    links to two producer spans, and a failed span."""

    TRACE = "5b8efff798038103d269b633813fc60c"

    def __init__(self) -> None:
        base = 1_700_000_000_000_000_000

        def span(sid, parent, name, kind, start_us, end_us, **extra):
            s = {"traceId": self.TRACE, "spanId": sid, "parentSpanId": parent, "name": name, "kind": kind,
                 "startTimeUnixNano": str(base + start_us * 1000), "endTimeUnixNano": str(base + end_us * 1000)}
            s.update(extra)
            return s

        def rs(service, spans):
            return {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                    "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}]}

        doc = {"result": {"resourceSpans": [
            rs("agent-feeds", [span("00000000000000a1", "", "feeds.collect", 1, 0, 900),
                               span("00000000000000a2", "00000000000000a1", "emit prices", 4, 100, 200),
                               span("00000000000000a3", "00000000000000a1", "emit news", 4, 300, 400)]),
            rs("agent-analyst", [span("00000000000000b1", "00000000000000a1", "analyst.fan_in", 5, 500, 850,
                                      links=[{"traceId": self.TRACE, "spanId": "00000000000000a2"},
                                             {"traceId": self.TRACE, "spanId": "00000000000000a3"}]),
                                 span("00000000000000b2", "00000000000000b1", "llm.call", 3, 550, 800,
                                      status={"code": 2, "message": "<i>rate limited</i>"})]),
        ]}}
        payload = json.dumps(doc).encode()
        path = f"/api/v3/traces/{self.TRACE}"
        self.server, self.url = serve_query(lambda p: payload if p == path else None)


def test_timeline_draws_span_links_and_marks_errors(tmp_path: Path) -> None:
    from loom._runner import Child, find_binary

    query = FixedQuery()
    env = dict(os.environ, LOOM_TRACE_QUERY_URL=query.url, LOOM_TELEMETRY_AUTO="0", RUST_LOG="warn")
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    bridge = Child("bridge", [find_binary("loom-bridge", REPO), "--listen", "127.0.0.1:0",
                              "--dashboard-listen", "127.0.0.1:0"], env, tmp_path, lambda line: None)
    bridge.start()
    driver = None
    try:
        url = bridge.wait_for(r"loom-bridge dashboard on (http://\S+)", timeout=30).group(1)
        driver = _driver()
        d = Dash(None, driver, url)
        driver.get(f"{url}/#/trace/{FixedQuery.TRACE}")
        rows = d.wait(lambda: (lambda r: r if len(r) == 5 else None)(_rows(d, "#span-rows .span-row")), 30, "5 span rows")
        assert [(r.get_attribute("data-name"), int(r.get_attribute("data-depth"))) for r in rows] == [
            ("feeds.collect", 0), ("emit prices", 1), ("emit news", 1), ("analyst.fan_in", 1), ("llm.call", 2)]
        # The fan-in's two links are drawn, from each producer's row to the consumer's.
        paths = d.wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#link-overlay path.span-link"), 10, "link curves")
        assert sorted((p.get_attribute("data-from"), p.get_attribute("data-to")) for p in paths) == [
            ("00000000000000a2", "00000000000000b1"), ("00000000000000a3", "00000000000000b1")]
        # The failed span stands out; its message is text.
        llm = rows[4]
        assert llm.get_attribute("data-status") == "error"
        assert "error" in llm.find_element(By.CSS_SELECTOR, ".bar").get_attribute("class")
        assert llm.find_element(By.CSS_SELECTOR, ".err-badge").get_attribute("title") == "<i>rate limited</i>"
        rows[3].click()
        detail = d.wait(lambda: driver.find_element(By.ID, "span-detail").text, 10, "span details")
        assert "Links (2)" in detail and "emit prices" in detail and "emit news" in detail
        # A trace the store does not have: the page says so.
        driver.get(f"{url}/#/trace/{'1' * 32}")
        d.wait(lambda: "not found" in driver.find_element(By.ID, "timeline-status").text, 10, "a not-found message")
        assert _rows(d, "#span-rows .span-row") == []
    finally:
        if driver:
            driver.quit()
        bridge.stop()
        query.server.shutdown()
