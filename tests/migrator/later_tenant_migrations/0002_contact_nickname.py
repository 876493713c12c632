"""A tenant migration released after the migration: a column with an index."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("contact_data", "0001_initial")]

    operations = [
        migrations.AddField(model_name="contact", name="nickname", field=models.TextField(null=True, db_index=True)),
    ]
