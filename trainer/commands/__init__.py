"""One module per `trainer` sub-command group; each exposes ``register(app)``."""
