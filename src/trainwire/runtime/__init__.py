"""The runtime a run executes on: devices and strategies, precision, compile, throughput,
gradient health, the caller's process state and library logging."""
