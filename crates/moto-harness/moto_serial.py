"""moto's server, answering one request at a time.

DynamoDB applies each write to an item atomically, so of two conditional writes racing for the
same item exactly one succeeds. moto's own threaded server checks the condition and writes
without a lock, so both can succeed. Serving requests one at a time (connections are still
accepted concurrently) restores the guarantee the stores' race tests check.

Usage: python moto_serial.py HOST PORT
"""

import os
import sys
import threading

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serial(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    run_simple(host, port, serial, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
