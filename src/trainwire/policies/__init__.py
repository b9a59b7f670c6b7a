"""Policies: the decisions inside the loop (learning rate, stopping, gradients, non-finite
steps, checkpoint cadence, optimizers, objectives and losses), each a port and its options."""
