"""The remote site's side of the link: what `tandem receive` runs (firmware/receive_app.py).

- ``server``: one link session after another over the protocol core (hal/media/remote/frames).
- ``replica``: the copy of the volume the site keeps, with its generation state.
- ``journal``: the per-epoch journal that makes a resync atomic at the site.
"""
