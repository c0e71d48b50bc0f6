"""A second medium at another site, over the link.

- ``frames``: the link protocol core without I/O (CBOR frames, both ends' state machines).
- ``generations``: generation ids, the connect decision (resync / full sync / split brain).
- ``net``: TLS contexts, keepalive and the pacing token bucket both ends use.
- ``medium.RemoteMedium``: the appliance side, a Medium over the link to a `tandem receive`
  (firmware/second_medium.py picks it or hal/media/nbd.py's NbdMedium for a URL.)
"""
