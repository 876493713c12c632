#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "salesflow.settings")
    from django.core.management import execute_from_command_line

    from salesflow.database import DatabaseUrlError
    from salesflow.environment import SettingsError

    try:
        execute_from_command_line(sys.argv)
    except (DatabaseUrlError, SettingsError) as exc:  # raised while the settings load: one line, not a traceback
        sys.stderr.write(f"CommandError: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
