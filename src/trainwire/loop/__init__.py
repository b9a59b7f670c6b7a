"""The loop: the Trainer, the Step it calls for each batch, the hooks around it, and the stop token."""
