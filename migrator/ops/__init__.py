"""SQL operations the phases are made of: copy, constraints, fingerprints, grants, backup, ...

They take plain arguments (schemas, tables, callbacks) and never import the engine.
"""
