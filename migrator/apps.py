from django.apps import AppConfig


class MigratorAppConfig(AppConfig):
    name = "migrator"
    verbose_name = "Schema migration"
