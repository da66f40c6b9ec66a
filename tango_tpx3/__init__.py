"""Tango device classes SpidrBoard, Timepix3Chip and Tpx3Pipeline."""
