"""The composition root: settings, the resources a running app holds, migrations, the embedded PostgreSQL,
how ``serve`` runs uvicorn, and the ``persona-runtime`` command."""
