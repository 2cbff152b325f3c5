"""Run one backstop flow in this process and print its outcome with this process's peak RSS.

Used by the benchmark scripts so that each measurement is its own process: peak RSS
(ru_maxrss of this process only; the ephemeral Prefect server is a separate child).
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> None:
    kind, payload = sys.argv[1], json.loads(sys.argv[2])
    from backstop.flows.params import BackupRequest, RestoreRequest
    from backstop.tasks.secrets import hide_secrets  # the payload's URLs carry passwords

    started = time.perf_counter()
    if kind == "backup":
        from backstop.flows.backup import backup

        outcome = backup(request=hide_secrets(BackupRequest.model_validate(payload)))
    else:
        from backstop.flows.restore import restore

        outcome = restore(request=hide_secrets(RestoreRequest.model_validate(payload)))
    result = outcome.model_dump(mode="json")
    result["process_s"] = round(time.perf_counter() - started, 3)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
