"""Starts SeaweedFS (`weed mini`) on free loopback ports with one S3
identity, for the tests: an S3 API that checks every signature.

Prints `ENDPOINT ACCESS_KEY SECRET_KEY PID` once S3 answers; the server
keeps running in the background, its log in DIR/weed.log.
"""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port_pair():
    """A port p with p and p + 10000 free: weed puts gRPC at +10000."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    sys.exit("no free port pair for SeaweedFS")


def main():
    weed, data = sys.argv[1], sys.argv[2]
    os.makedirs(data, exist_ok=True)
    access, secret = "wasq-test", secrets.token_hex(16)
    config = os.path.join(data, "s3.json")
    with open(config, "w") as f:
        json.dump({"identities": [{"name": "wasq", "credentials": [
            {"accessKey": access, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    ports = {name: free_port_pair() for name in ["master", "volume", "filer", "s3", "admin"]}
    log = open(os.path.join(data, "weed.log"), "w")
    server = subprocess.Popen([
        weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", f"-s3.port={ports['s3']}",
        f"-admin.port={ports['admin']}", "-admin.ui=false", "-webdav=false",
        "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={config}",
        # Every bucket takes a volume of its own; small volumes let a whole
        # test run's buckets fit in the free disk of any machine.
        "-master.volumeSizeLimitMB=64",
    ], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"SeaweedFS exited; see {data}/weed.log")
        try:
            urllib.request.urlopen(endpoint + "/", timeout=1)
            break
        except urllib.error.HTTPError:
            break  # an S3 error answer: it is up
        except OSError:
            time.sleep(0.3)
    else:
        sys.exit(f"SeaweedFS did not answer on {endpoint}; see {data}/weed.log")
    print(endpoint, access, secret, server.pid)


if __name__ == "__main__":
    main()
