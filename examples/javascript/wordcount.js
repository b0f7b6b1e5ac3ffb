// A wasq processor in JavaScript: counts the lines, words and bytes of one
// object and records the counts.
//
// The message body is a JSON job, `{"uri": "s3://docs/report.txt"}`. The
// counts go to the records table named by the `table` setting (default
// `wordcounts`) under the object's URI, and become the message's result.

import { open } from "wasq:processor/blobs@0.1.4";
import { get } from "wasq:processor/config@0.1.4";
import { log } from "wasq:processor/log@0.1.4";
import { put } from "wasq:processor/records@0.1.4";

const CHUNK = 1 << 16;

export function handle(message) {
  let job;
  try {
    job = JSON.parse(message.body);
  } catch (err) {
    return reject(`job is not valid JSON: ${err.message}`);
  }
  const uri = job?.uri;
  if (typeof uri !== "string" || uri === "") {
    return reject("field `uri` is missing");
  }

  let counts;
  try {
    counts = count(uri);
  } catch (err) {
    return blobFailure(uri, err.payload ?? { tag: "unavailable", val: String(err) });
  }

  const table = get("table") ?? "wordcounts";
  const result = JSON.stringify({ uri, ...counts });
  try {
    put(table, uri, result);
  } catch (err) {
    return retry(`recording the counts: ${err.payload ?? err}`);
  }
  log("info", `${uri}: ${counts.words} words`);
  return { tag: "done", val: result };
}

function isSpace(byte) {
  // ASCII whitespace, as Python's bytes.split() sees it.
  return byte === 32 || (byte >= 9 && byte <= 13);
}

function count(uri) {
  let lines = 0;
  let words = 0;
  let bytes = 0;
  let inWord = false;
  const reader = open(uri);
  for (;;) {
    const chunk = reader.read(CHUNK);
    if (chunk.length === 0) break;
    bytes += chunk.length;
    for (const byte of chunk) {
      if (byte === 10) lines += 1;
      if (isSpace(byte)) {
        inWord = false;
      } else if (!inWord) {
        inWord = true;
        words += 1;
      }
    }
  }
  return { lines, words, bytes };
}

// Bad input is rejected, naming it; a store that is down is retried.
function blobFailure(uri, error) {
  const what = {
    "not-found": "not found",
    denied: "denied",
    invalid: "invalid",
  }[error.tag];
  if (what === undefined) {
    return retry(`\`${uri}\`: ${error.val}`);
  }
  return reject(`\`${uri}\`: ${what}: ${error.val}`);
}

function reject(reason) {
  return { tag: "reject", val: reason };
}

function retry(reason) {
  return { tag: "retry", val: { reason, delaySecs: undefined } };
}
