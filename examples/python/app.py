"""A wasq processor in Python: counts the lines, words and bytes of one
object and records the counts.

The message body is a JSON job, `{"uri": "s3://docs/report.txt"}`. The
counts go to the records table named by the `table` setting (default
`wordcounts`) under the object's URI, and become the message's result.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import blobs, config, log, records
from wit_world.imports.types import (
    Message,
    Outcome,
    Outcome_Done,
    Outcome_Reject,
    Outcome_Retry,
    RetryAfter,
)

CHUNK = 1 << 16


class WitWorld(wit_world.WitWorld):
    def handle(self, message: Message) -> Outcome:
        try:
            job = json.loads(message.body)
        except ValueError as err:
            return Outcome_Reject(f"job is not valid JSON: {err}")
        uri = job.get("uri") if isinstance(job, dict) else None
        if not isinstance(uri, str) or not uri:
            return Outcome_Reject("field `uri` is missing")

        try:
            counts = count(uri)
        except Err as err:
            return blob_failure(uri, err.value)

        table = config.get("table") or "wordcounts"
        result = json.dumps({"uri": uri, **counts})
        try:
            records.put(table, uri, result)
        except Err as err:
            return Outcome_Retry(RetryAfter(f"recording the counts: {err.value}", None))
        log.log(log.Level.INFO, f"{uri}: {counts['words']} words")
        return Outcome_Done(result)


def count(uri: str) -> dict:
    lines = words = size = 0
    in_word = False
    with blobs.open(uri) as reader:
        while chunk := reader.read(CHUNK):
            size += len(chunk)
            lines += chunk.count(b"\n")
            words += len(chunk.split())
            # A word cut in two by the chunk boundary counts once.
            if in_word and not chunk[:1].isspace():
                words -= 1
            in_word = not chunk[-1:].isspace()
    return {"lines": lines, "words": words, "bytes": size}


def blob_failure(uri: str, error: blobs.Error) -> Outcome:
    """Bad input is rejected, naming it; a store that is down is retried."""
    if isinstance(error, blobs.Error_Unavailable):
        return Outcome_Retry(RetryAfter(f"`{uri}`: {error.value}", None))
    what = {
        blobs.Error_NotFound: "not found",
        blobs.Error_Denied: "denied",
        blobs.Error_Invalid: "invalid",
    }[type(error)]
    return Outcome_Reject(f"`{uri}`: {what}: {error.value}")
