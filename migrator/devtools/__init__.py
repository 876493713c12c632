"""Tools for demos and tests (seed a legacy database, reset it). Nothing in the migration imports these."""
