"""The runtime a run executes on: devices and strategies, precision, compile, throughput,
gradient health and the caller's process state."""
