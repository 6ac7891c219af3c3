"""Fork scenarios for test_python_client.py, each run as ``python fork_helpers.py SCENARIO
ADDRESS`` in a process of its own: the process that forks holds only what a user's process would
(client channels), not the test's in-process gateway server, whose polling threads a forked child
cannot survive. Each scenario prints one JSON object; the child's part of it is what the child
returned, ``"raised ..."``, or ``"hung"`` (killed after CHILD_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

import fjord  # noqa: E402
import fjord.publisher as publisher  # noqa: E402

CHILD_TIMEOUT_S = 15.0


def in_forked_child(body: Callable[[], str]) -> str:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                out = body()
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                out = f"raised {e!r}"
            os.write(write_end, out.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return "hung"
        time.sleep(0.02)
    with os.fdopen(read_end, "rb") as r:
        return r.read().decode() or "died"


def default_lock_held(address: str) -> Dict[str, Any]:
    """Fork while another thread creates the shared Publisher (holding the module's lock)."""
    os.environ["FJORD_GATEWAY_ADDRESS"] = address
    real = publisher.Publisher
    creating, may_finish = threading.Event(), threading.Event()

    class SlowToCreate(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            creating.set()
            may_finish.wait(30)
            super().__init__(*args, **kwargs)

    publisher.Publisher = SlowToCreate  # type: ignore[misc]
    creator = threading.Thread(target=publisher.default_publisher)
    creator.start()
    creating.wait(10)

    def child() -> str:
        publisher.Publisher = real  # type: ignore[misc]
        return repr(fjord.publish("t", b"from-child"))

    out = in_forked_child(child)
    may_finish.set()
    creator.join(10)
    return {"child": out}


def used_before_fork(address: str) -> Dict[str, Any]:
    """A Publisher used in the parent, then in a forked child, then in the parent again."""
    with fjord.Publisher(address, timeout=5, retries=0) as pub:
        before = pub.publish("t", b"parent-1")
        out = in_forked_child(lambda: repr(pub.publish("t", b"child")))
        after = pub.publish("t", b"parent-2")
    return {"child": out, "parent": [repr(before), repr(after)]}


def created_in_child(address: str, kind: str) -> Dict[str, Any]:
    """Publishers created in children of a process connected to the same gateway."""

    def child() -> str:
        if kind == "sync":
            with fjord.Publisher(address, timeout=5, retries=0) as pub:
                return repr(pub.publish("t", b"child"))

        async def main() -> str:
            async with fjord.AsyncPublisher(address, timeout=5) as pub:
                return repr(await pub.publish("t", b"child"))

        return asyncio.run(main())

    with fjord.Publisher(address, timeout=5, retries=0) as parent:
        parent.publish("t", b"parent-1")
        outs = [in_forked_child(child) for _ in range(3)]
        parent.publish("t", b"parent-2")
    return {"children": outs}


def async_inherited(address: str) -> Dict[str, Any]:
    """An AsyncPublisher with a message queued in the parent, used and closed in a child."""

    async def main() -> Dict[str, Any]:
        pub = fjord.AsyncPublisher(address, timeout=5, linger_ms=60_000)
        queued = pub.send("t", fjord.Message(b"parent-queued"))  # waits for its linger

        def child() -> str:
            async def use() -> str:
                started = time.monotonic()
                try:
                    await pub.publish("t", b"child")
                    return "published"
                except fjord.FjordError as e:
                    took = time.monotonic() - started
                    await pub.close()  # must not send what the parent queued
                    await asyncio.sleep(0.2)
                    return f"{took:.2f} {e}"

            return asyncio.run(use())

        out = in_forked_child(child)
        await pub.close()
        return {"child": out, "parent": repr(await queued)}

    return asyncio.run(main())


SCENARIOS: Dict[str, Callable[[str], Dict[str, Any]]] = {
    "default-lock-held": default_lock_held,
    "used-before-fork": used_before_fork,
    "created-in-child-sync": lambda a: created_in_child(a, "sync"),
    "created-in-child-async": lambda a: created_in_child(a, "async"),
    "async-inherited": async_inherited,
}

if __name__ == "__main__":  # pragma: no cover - runs as a subprocess
    scenario, address = sys.argv[1], sys.argv[2]
    print(json.dumps(SCENARIOS[scenario](address)), flush=True)
    os._exit(0)  # the scenario's leftover threads (a hung creator) must not keep it alive
