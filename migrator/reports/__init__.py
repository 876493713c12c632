"""Read models for the CLI and the admin: what the tracking table says, computed once for both."""
