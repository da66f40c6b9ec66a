"""Simulated SPIDR board and Timepix3 hit generators."""
