"""CLI subcommands that live beside their pillar's orchestration: each module defines ``add_parser(subparsers)``
and ``run(args) -> int``. ``regimen.cli`` imports every module listed in ``regimen.cli.COMMAND_MODULES`` (a module
that fails to import is an error, not a missing command), so a module imports only the standard library at its top;
a command that needs an optional extra (Ray for ``tune``) imports it inside ``run`` and says how to install it."""
