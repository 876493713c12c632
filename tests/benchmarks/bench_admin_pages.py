#!/usr/bin/env python
"""Time the admin pages and ``migrate_phase status`` on whatever database ``DATABASE_URL`` names.

Run on demand, after a benchmark left a migrated database behind (e.g. ``bench_tenants.py
--tenants 10000`` leaves ``sf_bench_tenants``)::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/sf_bench_tenants \\
        ./scripts/python tests/benchmarks/bench_admin_pages.py

Each page is requested ``--repeat`` times with Django's test client, logged in as a superuser made
for the run (and deleted afterwards); ``status`` runs as its own process (interpreter start included).
Nothing else in the database is written.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "salesflow.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.urls import reverse  # noqa: E402

from tenants.models import Tenant  # noqa: E402

PAGES = {
    "admin dashboard": "admin:migrator_migrationrecord_dashboard",
    "dashboard progress (JSON)": "admin:migrator_migrationrecord_dashboard_progress",
    "tenant list": "admin:tenants_tenant_changelist",
    "record list": "admin:migrator_migrationrecord_changelist",
}
USERNAME = "bench-admin-pages"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    setup_test_environment()
    settings.ALLOWED_HOSTS = ["testserver"]
    user_model = get_user_model()
    user_model.objects.filter(username=USERNAME).delete()
    user = user_model.objects.create_superuser(USERNAME, "bench@example.invalid", "not-used")
    try:
        client = Client()
        client.force_login(user)
        print(f"{Tenant.objects.count():,} tenants")
        for name, url_name in PAGES.items():
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                response = client.get(reverse(url_name))
                times.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise SystemExit(f"{name}: HTTP {response.status_code}")
            print(f"{name}: " + ", ".join(f"{t * 1000:.0f} ms" for t in times))
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "manage.py", "migrate_phase", "status"],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            times.append(time.perf_counter() - started)
        print("migrate_phase status: " + ", ".join(f"{t:.2f} s" for t in times))
    finally:
        user.delete()


if __name__ == "__main__":
    main()
