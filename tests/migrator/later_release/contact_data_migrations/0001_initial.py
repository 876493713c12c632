"""The real contact_data 0001, unchanged (a module name that starts with a digit is imported by name)."""

import importlib

Migration = importlib.import_module("salesflow.contact_data.migrations.0001_initial").Migration
