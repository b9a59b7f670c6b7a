"""The loop: the Trainer, the Step it calls for each batch, the hooks around it, the settings it reads
and the stop token."""
