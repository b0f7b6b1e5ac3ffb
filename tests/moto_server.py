"""moto's server, with its SQS queues' races closed.

moto 5.2.5 deletes a message by building a new list of the queue's
messages and assigning it, and moves a message to the dead-letter queue
during a receive, both without a lock: two hosts deleting at once can each
put back what the other removed (the message then stays in flight for good
while both deletes reported success), and a delete during a receive can
put back a message just moved to the dead-letter queue. Two receives at
once may also hand out one message twice. Here a delete and a receive hold
the queue's own message lock, which sends already take; a receive waiting
for messages lets go of it while it waits.

Usage: python tests/moto_server.py -H 127.0.0.1 -p PORT
"""

import sys

from moto.server import main
from moto.sqs.models import Queue, SQSBackend

_delete_message = Queue.delete_message
_receive_message = SQSBackend.receive_message


def delete_message(self, receipt_handle):
    with self._messages_lock:
        return _delete_message(self, receipt_handle)


def receive_message(self, queue_name, *args, **kwargs):
    with self.get_queue(queue_name)._messages_lock:
        return _receive_message(self, queue_name, *args, **kwargs)


Queue.delete_message = delete_message
SQSBackend.receive_message = receive_message

if __name__ == "__main__":
    sys.exit(main())
