"""CLI subcommands. Each module has ``register(subparsers)`` adding one parser whose
``func(args) -> int`` runs it; :mod:`trimode.cli` lists the modules."""
