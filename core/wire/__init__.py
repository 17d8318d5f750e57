"""What travels between peers: the frame codec, connections with their handshake, TLS, and the
framing shared with the code that runs Python on a worker.

Modules here import only the floor (``core.errors``, ``core.constants``) and each other.

- ``protocol``: the frame codec (a length-prefixed JSON header plus an optional raw payload).
- ``connection``: an asyncio connection speaking it, the version handshake and password proof,
  file streaming.
- ``tls``, ``preauth``: TLS contexts and the listener that tells TLS from plain; limits on
  connections that have not authenticated yet.
- ``remote``: the script run on workers for Python tasks (standard library and cloudpickle only),
  with the result and argument framings both sides use.
- ``library_runner``: the script a library instance runs on a worker (the library loop, its direct
  and forked calls), shipped beside ``remote`` and built on it.
"""
