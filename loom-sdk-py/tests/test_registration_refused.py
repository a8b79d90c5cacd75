"""A refusal retrying cannot fix (here ALREADY_EXISTS for a live duplicate id) fails start() at
once with the bridge's message, against a real loom-bridge, and is not asked again."""

from __future__ import annotations

import asyncio
import time

import pytest

import loom
import loom.agent as loom_agent

pytestmark = pytest.mark.timeout(60)
# Without the fail-fast path this policy would retry for many seconds before giving up.
PATIENT = loom.RetryPolicy(initial_s=0.05, max_s=0.3, start_attempts=50)


class CountingStub(loom_agent.pbg.BridgeStub):
    """The real stub; counts the RegisterAgent calls that reach the bridge."""

    calls = 0

    def __init__(self, channel) -> None:
        super().__init__(channel)
        real = self.RegisterAgent

        def counted(*args, **kwargs):
            CountingStub.calls += 1
            return real(*args, **kwargs)

        self.RegisterAgent = counted


def test_a_live_duplicate_id_fails_start_fast_with_the_bridges_message(bridge, spans, monkeypatch) -> None:
    async def main() -> None:
        first = await loom.Agent("dup-1", bridge_addr=bridge.url, retry=PATIENT).start()
        try:
            monkeypatch.setattr(loom_agent.pbg, "BridgeStub", CountingStub)
            CountingStub.calls = 0
            second = loom.Agent("dup-1", bridge_addr=bridge.url, retry=PATIENT)
            t0 = time.monotonic()
            with pytest.raises(loom.RegistrationRefused) as info:
                await second.start()
            took = time.monotonic() - t0
            print(f"start() refused in {took * 1000:.0f} ms after {CountingStub.calls} RegisterAgent call(s): {info.value}")
            assert took < 1.0, f"start() took {took:.2f}s to give up"
            err = info.value
            assert isinstance(err, loom.LoomConnectionError)
            assert err.code == "ALREADY_EXISTS"
            # The bridge's own words, not a generic "unreachable".
            assert "already" in err.message and "dup-1" in err.message, err.message
            assert err.message in str(err)
            assert CountingStub.calls == 1
            # Nothing keeps trying in the background.
            await asyncio.sleep(1.0)
            assert CountingStub.calls == 1
            assert not second._started
            # The first agent is untouched and still connected.
            assert first._connected.is_set()
        finally:
            await first.stop()

    asyncio.run(main())


def test_a_freed_id_can_be_taken_again(bridge, spans) -> None:
    """The fail-fast path is only for a live holder: once it stops, the id registers."""

    async def main() -> None:
        a = await loom.Agent("dup-2", bridge_addr=bridge.url, retry=PATIENT).start()
        await a.stop()
        b = await loom.Agent("dup-2", bridge_addr=bridge.url, retry=PATIENT).start()
        await b.stop()

    asyncio.run(main())
