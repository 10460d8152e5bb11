"""Networks, training loop and decoding. Imports neither DVC nor Prefect."""
