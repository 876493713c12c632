"""The real accounts 0001, unchanged (a module name that starts with a digit is imported by name)."""

import importlib

Migration = importlib.import_module("salesflow.accounts.migrations.0001_initial").Migration
