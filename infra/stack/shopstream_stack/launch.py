"""`python -m shopstream_stack.launch SPEC`: what supervisord runs for each program.

The spec (JSON, written by `supervision.Supervisor.register`) holds the argv, the whole
environment, the working folder and the user. Passing them this way keeps supervisord's
own config free of quoting rules for values (a setting may hold commas, quotes or `%`),
and the environment exactly ours, whatever supervisord inherited. The launcher then
becomes the program (exec), so supervisord watches, signals and restarts the real
process.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
import time


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    argv: list[str] = spec["argv"]
    # the log is supervisord's copy of our stdout: mark where each start begins
    print(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}", flush=True)
    if spec.get("user") and os.getuid() == 0:  # PostgreSQL refuses to run as root
        pw = pwd.getpwnam(spec["user"])
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    os.chdir(spec["cwd"])
    os.execvpe(argv[0], argv, spec["env"])


if __name__ == "__main__":
    main(sys.argv[1])
