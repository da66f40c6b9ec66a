"""The Tango device server ``Tpx3Server``: hosts SpidrBoard, Timepix3Chip and Tpx3Pipeline.

Run it as a facility does, with ``TANGO_HOST`` set and the instance registered
(``tpx3 tango setup``)::

    TANGO_HOST=127.0.0.1:10000 Tpx3Server sim

Devices of one SPIDR board inside one server share one controller (one TCP connection,
the only one the board accepts): see :mod:`tango_tpx3.board_link`.

Unless the command line or the environment says otherwise, the server listens on loopback
only (``-ORBendPoint giop:tcp:127.0.0.1:``, which also keeps both ZMQ event ports on
loopback). Give ``-ORBendPoint giop:tcp:<ip>:<port>`` (or set ``ORBendPoint``) to serve a
network.
"""
from __future__ import annotations

import os
import sys

__all__ = ["main", "SERVER_NAME", "DEVICE_CLASSES", "DEFAULT_ENDPOINT"]

SERVER_NAME = "Tpx3Server"
DEFAULT_ENDPOINT = "giop:tcp:127.0.0.1:"

from tango_tpx3.spidr_board import SpidrBoard  # noqa: E402
from tango_tpx3.timepix3_chip import Timepix3Chip  # noqa: E402
from tango_tpx3.tpx3_pipeline import Tpx3Pipeline  # noqa: E402

#: The device classes this server hosts, in the order Tango creates them (boards first,
#: so chips and pipelines of the same server find their board already connecting).
DEVICE_CLASSES = (SpidrBoard, Timepix3Chip, Tpx3Pipeline)


def server_args(argv: list[str]) -> list[str]:
    """The argument vector for ``tango.server.run``: name first, loopback endpoint by default."""
    args = [SERVER_NAME] + list(argv)
    given = any(a.lower() == "-orbendpoint" for a in args) or os.environ.get("ORBendPoint")
    if not given:
        args += ["-ORBendPoint", DEFAULT_ENDPOINT]
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``Tpx3Server`` console script: ``Tpx3Server <instance> [tango options]``."""
    from tango.server import run

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(f"\nusage: {SERVER_NAME} <instance> [-v4] [-ORBendPoint giop:tcp:HOST:PORT] [-nodb -dlist a/b/c,...]")
        return 0 if argv else 2
    run(DEVICE_CLASSES, args=server_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
