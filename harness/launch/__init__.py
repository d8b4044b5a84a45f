"""Running plans on this machine: one run under torchrun, concurrent runs in slots, process
handling, live progress."""
