"""Tango device classes SpidrBoard, Timepix3Chip and Tpx3Pipeline, and how to run them.

- :mod:`tango_tpx3.server` - the ``Tpx3Server`` device server (``main``)
- :mod:`tango_tpx3.spidr_board`, :mod:`tango_tpx3.timepix3_chip`, :mod:`tango_tpx3.tpx3_pipeline` - the devices
- :mod:`tango_tpx3.board_link` - one shared SPIDR connection per board inside a server
- :mod:`tango_tpx3.pipeline_iface` - what Tpx3Pipeline needs from an acquisition pipeline;
  :mod:`tango_tpx3.backends` - the implementations by PipelineBackend: :mod:`tango_tpx3.live_backend`
  (tpx3lib's live pipeline, the default) and :mod:`tango_tpx3.provisional_pipeline` (board counters only)
- :mod:`tango_tpx3.demo` - the Tango part of ``make demo``
- :mod:`tango_tpx3.database` - the embedded Tango database and YAML registration (``tpx3 tango``)
- :mod:`tango_tpx3.testing` - simulator + database + server as a facility runs them (tests, demo)

See docs/tango.md.
"""
