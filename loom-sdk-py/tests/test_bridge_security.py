"""The SDK against a real loom-bridge with bearer tokens, mutual TLS and limits: the token and
certificates come from arguments or the environment, refusals that retrying cannot fix fail
start() at once with the bridge's message, and the bridge's memory stays bounded under a flood
of registrations and subscriptions (VmRSS of the bridge process, read from /proc)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import List

import grpc
import pytest

import loom
from loom.agent import Message
from loom.v1 import loom_pb2 as pb
from loom.v1 import loom_pb2_grpc as pbg

from sdk_harness import BridgeProcess

pytestmark = pytest.mark.timeout(120)
FAST = loom.RetryPolicy(initial_s=0.05, max_s=0.3, start_attempts=3)

TOKENS = """\
tokens:
  - name: sensors
    token: sensors-s3cret
    agents: ["sensor-*"]
    publish: ["sensor.*"]
    subscribe: []
  - name: ops
    token: ops-s3cret
"""


@pytest.fixture
def token_bridge(tmp_path: Path):
    f = tmp_path / "tokens.yaml"
    f.write_text(TOKENS)
    b = BridgeProcess(extra=["--tokens-file", str(f)]).start()
    try:
        yield b
    finally:
        b.stop()


async def wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def refused(coro) -> loom.RegistrationRefused:
    async def run() -> loom.RegistrationRefused:
        t0 = time.monotonic()
        with pytest.raises(loom.RegistrationRefused) as info:
            await coro
        # Fail fast: one refusal, not a retry budget.
        assert time.monotonic() - t0 < 2.0
        return info.value

    return asyncio.run(run())


def test_missing_and_wrong_tokens_fail_start_fast_as_unauthenticated(token_bridge, monkeypatch) -> None:
    monkeypatch.delenv("LOOM_BRIDGE_TOKEN", raising=False)
    err = refused(loom.Agent("sensor-1", bridge_addr=token_bridge.url, retry=FAST, telemetry=False).start())
    assert err.code == "UNAUTHENTICATED"
    assert "bearer token" in err.message
    err = refused(loom.Agent("sensor-1", bridge_addr=token_bridge.url, retry=FAST, telemetry=False,
                             token="sensors-wrong").start())
    assert err.code == "UNAUTHENTICATED"
    assert "sensors-wrong" not in str(err)


def test_a_token_outside_its_rules_is_permission_denied_and_an_allowed_one_is_served(token_bridge, monkeypatch) -> None:
    got: List[Message] = []

    async def on_event(ctx, topic, msg):
        got.append(msg)

    async def scenario() -> None:
        # Agent id outside the token's `agents` rule.
        with pytest.raises(loom.RegistrationRefused) as info:
            await loom.Agent("processor", bridge_addr=token_bridge.url, retry=FAST, telemetry=False,
                             token="sensors-s3cret").start()
        assert info.value.code == "PERMISSION_DENIED"
        assert "`agents` rule" in info.value.message and "s3cret" not in info.value.message
        # A subscription outside `subscribe` (an empty list allows none; own reply topics pass).
        with pytest.raises(loom.RegistrationRefused) as info:
            await loom.Agent("sensor-2", topics=["sensor.*"], bridge_addr=token_bridge.url, retry=FAST,
                             telemetry=False, token="sensors-s3cret").start()
        assert info.value.code == "PERMISSION_DENIED"
        assert "`subscribe` rule" in info.value.message

        # The token from the environment; the ops token as an argument.
        monkeypatch.setenv("LOOM_BRIDGE_TOKEN", "sensors-s3cret")
        sensor = loom.Agent("sensor-1", bridge_addr=token_bridge.url, retry=FAST, telemetry=False)
        ops = loom.Agent("ops", topics=["*"], on_event=on_event, bridge_addr=token_bridge.url, retry=FAST,
                         telemetry=False, token="ops-s3cret")
        async with ops, sensor:
            await sensor.context.emit("sensor.data", {"v": 1})
            # A topic outside `publish`: refused per event, with the rule named.
            with pytest.raises(loom.PublishError) as perr:
                await sensor.context.emit("control.stop", {"v": 2})
            assert perr.value.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
            assert "`publish` rule" in perr.value.message
            await sensor.context.emit("sensor.more", {"v": 3})
            await wait_for(lambda: len([m for m in got if m.topic.startswith("sensor.")]) == 2)
            # Heartbeats carry the token too: the agent stays connected past a few intervals.
            assert sensor.connected
        assert [m.topic for m in got if not m.topic.startswith("_loom")] == ["sensor.data", "sensor.more"]

    asyncio.run(scenario())


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _pki(d: Path) -> None:
    """CA, other CA, a bridge certificate for 127.0.0.1/localhost and an agent certificate."""
    for ca in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=loom test {ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for leaf, ca in (("server", "ca"), ("client", "ca"), ("stranger", "other")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", "-subj", f"/CN={leaf}", cwd=d)
        ext = "server.ext" if leaf == "server" else "client.ext"
        _openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{leaf}.pem", "-days", "2", "-extfile", ext, cwd=d)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_mtls_round_trip_from_env_and_a_wrong_ca_refused(tmp_path: Path, monkeypatch) -> None:
    _pki(tmp_path)
    p = lambda name: str(tmp_path / name)  # noqa: E731
    b = BridgeProcess(extra=["--tls-cert-file", p("server.pem"), "--tls-key-file", p("server.key"),
                             "--tls-client-ca-file", p("ca.pem")]).start()
    got: List[Message] = []

    async def on_event(ctx, topic, msg):
        got.append(msg)

    async def scenario() -> None:
        url = f"https://127.0.0.1:{b.port}"
        # Certificates from the environment for one agent, from arguments for the other.
        monkeypatch.setenv("LOOM_BRIDGE_CA_FILE", p("ca.pem"))
        monkeypatch.setenv("LOOM_BRIDGE_CERT_FILE", p("client.pem"))
        monkeypatch.setenv("LOOM_BRIDGE_KEY_FILE", p("client.key"))
        rx = loom.Agent("rx", topics=["tls.*"], on_event=on_event, bridge_addr=url, retry=FAST, telemetry=False)
        monkeypatch.delenv("LOOM_BRIDGE_CERT_FILE")
        monkeypatch.delenv("LOOM_BRIDGE_KEY_FILE")
        monkeypatch.delenv("LOOM_BRIDGE_CA_FILE")
        tx = loom.Agent("tx", bridge_addr=f"127.0.0.1:{b.port}", retry=FAST, telemetry=False,
                        ca_file=p("ca.pem"), cert_file=p("client.pem"), key_file=p("client.key"))
        async with rx, tx:
            await tx.context.emit("tls.data", {"secret": 42})
            await wait_for(lambda: got)
        assert got[0].json() == {"secret": 42}

        # Trusting another CA: the bridge's certificate is not accepted.
        with pytest.raises(loom.LoomConnectionError):
            await loom.Agent("wrong-ca", bridge_addr=url, retry=FAST, telemetry=False, ca_file=p("other.pem"),
                             cert_file=p("client.pem"), key_file=p("client.key")).start()
        # A client certificate another CA signed, or none: the bridge refuses the handshake.
        with pytest.raises(loom.LoomConnectionError):
            await loom.Agent("stranger", bridge_addr=url, retry=FAST, telemetry=False, ca_file=p("ca.pem"),
                             cert_file=p("stranger.pem"), key_file=p("stranger.key")).start()
        with pytest.raises(loom.LoomConnectionError):
            await loom.Agent("no-cert", bridge_addr=url, retry=FAST, telemetry=False, ca_file=p("ca.pem")).start()

    try:
        asyncio.run(scenario())
    finally:
        b.stop()
    assert not any("panicked" in line for line in b.lines), "\n".join(b.lines)


def test_half_a_client_certificate_or_a_bad_token_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cert_file and key_file"):
        loom.Agent("a", cert_file="c.pem", telemetry=False)
    with pytest.raises(ValueError, match="printable ASCII"):
        loom.Agent("a", token="has space", telemetry=False)
    creds = loom.Agent("a", token="t0ken", telemetry=False)._credentials
    assert "t0ken" not in repr(creds)


def _vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_bridge_memory_stays_bounded_under_registration_and_subscription_floods() -> None:
    b = BridgeProcess(extra=["--max-agents", "50", "--max-subscriptions-per-agent", "16"]).start()
    assert b.proc is not None

    async def flood(n: int, n_subs: int, prefix: str, concurrency: int = 64) -> dict:
        codes: dict = {}
        subscriptions = [pb.Subscription(pattern=f"t{j}.*") for j in range(n_subs)]
        async with grpc.aio.insecure_channel(b.addr) as ch:
            stub = pbg.BridgeStub(ch)
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with sem:
                    req = pb.RegisterAgentRequest(
                        agent_id=f"{prefix}-{i}", subscriptions=subscriptions, capabilities=[f"{prefix}-{i}.cap"],
                    )
                    try:
                        # Generous: the machine may be busy; a timeout is not what is measured.
                        await stub.RegisterAgent(req, timeout=60)
                        code = "OK"
                    except grpc.aio.AioRpcError as e:
                        code = e.code().name
                codes[code] = codes.get(code, 0) + 1

            await asyncio.gather(*(one(i) for i in range(n)))
        return codes

    try:
        # Warm-up: fill the agent table and let the allocator settle.
        warm = asyncio.run(flood(2_000, 1, "warm"))
        assert warm == {"OK": 50, "RESOURCE_EXHAUSTED": 1_950}, warm
        before = _vm_rss_kib(b.proc.pid)
        regs = asyncio.run(flood(20_000, 1, "flood"))
        subs = asyncio.run(flood(300, 5_000, "subs", concurrency=8))
        after = _vm_rss_kib(b.proc.pid)
        print(f"bridge VmRSS {before} KiB before, {after} KiB after 20000 registrations past max_agents "
              f"and 300 x 5000-subscription registrations ({after - before:+d} KiB)")
        assert regs == {"RESOURCE_EXHAUSTED": 20_000}, regs
        assert subs == {"RESOURCE_EXHAUSTED": 300}, subs
        # Each refused registration that were kept would cost well over 1 KiB: 20 000 would show
        # as tens of MiB. Allow allocator noise, not growth.
        assert after - before < 16 * 1024, (before, after)
    finally:
        b.stop()
