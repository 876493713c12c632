"""The later release's tenant migration: NOT NULL with a Django default (no database default after it), and
a column with a database default."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("contact_data", "0001_initial")]

    operations = [
        migrations.AddField(model_name="contact", name="channel", field=models.TextField(default="email")),
        migrations.AddField(model_name="contact", name="priority", field=models.IntegerField(db_default=5)),
    ]
