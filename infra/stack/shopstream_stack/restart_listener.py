"""supervisord's event listener: counts restarts, and never lets a process stay given up on.

supervisord restarts a process that dies at once, and one that dies while starting
after 1, 2, 3 ... s, up to `start_retries` times (EmbeddedSettings); then it gives up
(FATAL). A store that is down for minutes can make a process that needs it fail like
that, and nothing should stay down once the store is back: so on FATAL this listener
starts the process again after `rescue_after_s`, and again, for as long as it keeps failing.

Every start nobody asked for (from EXITED, BACKOFF or FATAL; not from STOPPED, which
is a person's `invoke up`) is counted in the run directory's restarts file
(`shopstream.restarts`), and so is every death nobody asked for, at start (BACKOFF) or
later: `invoke up` gives up on a process that keeps dying without waiting for FATAL.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from supervisor import childutils

from shopstream.restarts import record

UNASKED = {"EXITED", "BACKOFF", "FATAL"}


def rescue(name: str) -> None:
    """Start a process supervisord gave up on (unless someone started or stopped it since)."""
    rpc = childutils.getRPCInterface(os.environ)
    try:
        if rpc.supervisor.getProcessInfo(name)["statename"] == "FATAL":
            rpc.supervisor.startProcess(name, False)
    except Exception as e:  # noqa: BLE001 - supervisord stopping, or the program removed
        print(f"could not restart {name}: {e}", file=sys.stderr, flush=True)


def handle(path: Path, rescue_after_s: float, event: str, headers: dict[str, str]) -> None:
    group, program = headers["groupname"], headers["processname"]
    if event == "PROCESS_STATE_STARTING" and headers.get("from_state") in UNASKED:
        record(path, group, program, restarted=True)
    elif event == "PROCESS_STATE_BACKOFF" or (event == "PROCESS_STATE_EXITED" and headers.get("expected") == "0"):
        record(path, group, program, exited=True)  # died while starting, or later
    elif event == "PROCESS_STATE_FATAL":
        timer = threading.Timer(rescue_after_s, rescue, args=(f"{group}:{program}",))
        timer.daemon = True
        timer.start()


def main(path: str, rescue_after_s: str) -> None:
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            event_headers, _ = childutils.eventdata(payload + "\n")
            handle(Path(path), float(rescue_after_s), headers["eventname"], event_headers)
        except Exception as e:  # noqa: BLE001 - a bad event must not stop the listener
            print(f"event {headers.get('eventname')}: {e}", file=sys.stderr, flush=True)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
