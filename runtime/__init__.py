"""The runtime, by job: ``chat`` (the turn), ``access`` (who may do what, and how much), ``authoring`` (tools for
persona authors) and ``server`` (settings, resources, the CLI: the composition root). Imports point down:
server → authoring → chat → access → ``personas``, ``providers`` → ``core``."""
