"""Paradigms: what happens around the one loop (supervised, staged pretraining) and the steps
and objectives of the GAN, gradient boosting, generative and adversarial training."""
