"""moto's server, with one of its SQS races closed.

moto 5.2.5 deletes a message by building a new list of the queue's
messages and assigning it, without a lock: two hosts deleting at once can
each put back what the other removed. The message then stays in flight for
good while both deletes reported success. Here a delete holds the queue's
own message lock, which sends already take. (Receives are left as moto
has them: holding the lock through a receive changed how FIFO batches came
back under load.)

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
