"""One module per `metaserve` subcommand; each exposes `register(subparsers)`."""
