"""One rank's PeerWatch in a process of its own, for tests/harness/test_peer_watch.py:

    python _watch_rank.py RANK WORLD PORT TIMEOUT_S BEAT_S

PORT 0 on rank 0: host the store (as rank 0 does under an srun launch) and print its port. Each
then prints "ready" and starts its watch on a line from stdin (as every rank of a job starts it
right after the rendezvous). The main thread only sleeps; the watch's line goes to stderr and it
exits the process with code 2."""

import datetime as dt
import socket
import sys
import time

import torch.distributed as dist

from adarem.run.peer_watch import PeerWatch

rank, world, port, timeout_s, beat_s = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), \
    float(sys.argv[5])
server = None
if port == 0:
    server = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=10), wait_for_workers=False)
    port = server.port
    print(port, flush=True)
client = dist.TCPStore("127.0.0.1", port, None, False, dt.timedelta(seconds=10))
watch = PeerWatch(dist.PrefixStore("test", client), rank, world, timeout_s,
                  lambda line, first: print(f"error: {line}", file=sys.stderr, flush=True), beat_s=beat_s,
                  probe=None if rank == 0 else socket.create_connection(("127.0.0.1", port)))
print("ready", flush=True)
sys.stdin.readline()
watch.start()
time.sleep(600)
