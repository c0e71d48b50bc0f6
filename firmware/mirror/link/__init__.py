"""The link to a remote site: a second medium that lives in another `tandem receive`.

- ``frames``: the protocol core without I/O (CBOR frames, both ends' state machines).
- ``generations``: generation ids, the connect decision (resync / full sync / split brain).
- ``remote_medium.RemoteMedium``: the appliance side, a Medium over the link.
- ``receiver``: `tandem receive`, the remote side (``replica``, ``journal``: its copy).
- ``nbd_medium.NbdMedium``: any NBD export as the second medium, through libnbd.
"""
