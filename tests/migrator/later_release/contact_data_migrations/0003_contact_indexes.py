"""The later release's index changes on the tenant contacts: one index removed, one renamed, one added."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("contact_data", "0002_contact_channel")]

    operations = [
        migrations.RemoveIndex(model_name="contact", name="contact_data_owner_idx"),
        migrations.RenameIndex(
            model_name="contact", new_name="contact_data_email_lookup_idx", old_name="contact_data_email_idx"
        ),
        migrations.AddIndex(
            model_name="contact", index=models.Index(fields=["company"], name="contact_data_company_idx")
        ),
    ]
