"""The later release's auth migration: NOT NULL with a Django default, no database default after it."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.AddField(model_name="user", name="timezone", field=models.TextField(default="UTC"))]
