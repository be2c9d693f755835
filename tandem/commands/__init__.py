"""The `tandem` subcommands that live outside the main parser: bench and draft (the only
modules allowed to import tandem.benchmarks)."""
