"""Models of hardware that cannot be on this machine, shared by the tests and `tandem torture`.

None of this is installed on an appliance (firmware/ and hal/ never import it):

- ``fram_models``: SPI (MB85RS/FM25V) and I2C (MB85RC) FRAM chips behind a fake bus,
  following the datasheets' command sets.
- ``media``: in-RAM media; ``faulty``: media that fail, tear and lose their volatile
  cache on a power cut, driven by one simulated power rail.
- ``memory_target``: an in-RAM block target for frontend tests and protocol fuzzing.
- ``fault_proxy``: links that fail on purpose (a TCP proxy that blackholes or cuts each
  direction, a pty null-modem cable with line noise), for the pair's tests.
"""
