"""What a query's failure says: its first line, and whether waiting can cure it.

A broker or S3 server that does not answer fails a query (the Kafka client gives up
bootstrapping after 30 s, s3a after its own retries); the same query started again
from its checkpoint once they are back carries on as if nothing happened. Anything
else (a checkpoint that does not match its output, records deleted by retention, a
bug, a dead JVM) comes back however long one waits, so it is not retried in-process:
the job exits non-zero and its supervisor starts a fresh process. Unknown errors count
as not transient for the same reason: a new process is the safe retry.

No pyspark import here: the tests and the status readers classify text.
"""

from __future__ import annotations

import re

# Checked first: these are never cured by restarting a query in this process.
FATAL = re.compile(
    "|".join(
        [
            r"Py4JNetworkError",
            r"Java server",
            r"stopped SparkContext",
            r"SparkContext (?:was|has been) shut down",
            r"OutOfMemoryError",
        ]
    )
)

TRANSIENT = re.compile(
    "|".join(
        [
            # the broker did not answer (kafka-python, in the source on the driver; librdkafka in
            # its tasks retries on its own, and a task that gets nothing ends in the TimeoutError below)
            r"KafkaTimeoutError",
            r"NoBrokersAvailable",
            r"KafkaConnectionError",
            r"NodeNotReadyError",
            r"RequestTimedOutError",
            r"NotLeaderForPartitionError",
            r"LeaderNotAvailableError",
            r"Unable to bootstrap",
            r"TimeoutError: KafkaRange\(",  # kafka_source.read: no records for pollTimeoutMs
            r"TimeoutError: no answer for the records at",  # shopstream.adapters.kafka.record_fingerprints
            # S3 did not answer (s3a over the AWS SDK)
            r"AWSClientIOException",
            r"SdkClientException",
            r"Unable to execute HTTP request",
            r"java\.net\.(?:ConnectException|SocketTimeoutException|SocketException|NoRouteToHostException)",
            r"org\.apache\.http\.(?:conn\.)?\w*(?:Connect|NoHttpResponse)\w*Exception",
            r"Connection refused",
            r"Connection reset",
            r"Read timed out",
            r"Status Code: (?:500|502|503|504)",
            r"Service ?Unavailable",
            r"SlowDown",
            r"AWSStatus500Exception",
            r"AWSServiceThrottledException",
            # a machine too busy to start a Python worker within the 10 s Spark waits for it (not
            # configurable; the Python data source's reader gets a worker of its own at each start)
            r"Python worker failed to connect back",
        ]
    )
)

_TRACEBACK = "Traceback (most recent call last):"
_ENDS = ("\n=== Streaming Query ===", "\n\nJVM stacktrace:")
_PY4J_CALL = re.compile(r"An error occurred while calling [\w.]+\.$")


def is_transient(text: str) -> bool:
    """True when the failure is a broker or S3 server that did not answer in time."""
    return not FATAL.search(text) and bool(TRANSIENT.search(text))


def headline(text: str, limit: int = 300) -> str:
    """The line that says what went wrong. For a Python exception (the Kafka source, a
    UDF): the exception line after its traceback, `KafkaTimeoutError: Unable to bootstrap
    from 127.0.0.1:9092`, not Spark's line announcing the traceback. For a Java call from
    Python: the Java exception, not py4j's `An error occurred while calling o85.exists.`.
    For Spark's own wrapper (`[TASK_WRITE_FAILED] ...`): that, with the root cause."""
    causes = re.findall(r"^\s*Caused by: (.+)$", text, re.MULTILINE)
    for end in _ENDS:
        text = text.split(end, 1)[0]
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not _PY4J_CALL.match(ln)]
    line = lines[0] if lines else "unknown error"
    if _TRACEBACK in text:
        raised = [
            ln
            for ln in text.split(_TRACEBACK)[-1].splitlines()
            if ln.strip() and not ln[0].isspace() and not ln.startswith("SQLSTATE")
        ]
        line = raised[-1] if raised else line
    line = re.sub(r"^: ", "", re.sub(r"\s*SQLSTATE: \w+", "", line.strip()))
    if line.startswith("[") and causes:
        line = f"{line} (caused by {causes[-1].strip()})"
    line = re.sub(r"^(?:[a-z_]\w*\.)+(?=[A-Z]\w*: )", "", line)  # kafka.errors.KafkaTimeoutError: ...
    line = re.sub(r"^(\w+): \1: ", r"\1: ", line)  # kafka-python repeats the class name
    return line if len(line) <= limit else line[: limit - 1] + "…"
