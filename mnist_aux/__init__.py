"""mnist_aux: see README."""
