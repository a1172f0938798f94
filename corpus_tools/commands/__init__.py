"""One module per ``corpus`` sub-command; each exposes ``register(app)``."""
