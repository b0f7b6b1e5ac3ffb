"""moto's server, with one of its SQS races closed.

moto 5.2.5 deletes a message by building a new list of the queue's
messages and assigning it, without a lock: two deletes at once (two hosts
on one queue) can each put back what the other removed. The message then
stays in flight for good while both deletes reported success. Here a
delete holds the queue's own message lock, which sends already take.

Usage: python tests/moto_server.py -H 127.0.0.1 -p PORT
"""

import sys

from moto.server import main
from moto.sqs.models import Queue

_delete_message = Queue.delete_message


def delete_message(self, receipt_handle):
    with self._messages_lock:
        return _delete_message(self, receipt_handle)


Queue.delete_message = delete_message

if __name__ == "__main__":
    sys.exit(main())
