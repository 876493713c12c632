"""A later release of SalesFlow, for the tests of deploys during the migration (later_release_settings).

Its migrations (``MIGRATION_MODULES``) add NOT NULL columns with a Django ``default=`` and no database
default, the way ``makemigrations`` writes them: ``auth.users.timezone`` (a shared app) and
``contact_data_contacts.channel``, and ``contact_data_contacts.priority`` with a database default;
then an index of the contacts removed, one renamed and one added. Its models
(:class:`apps.LaterReleaseConfig`) know those fields, as the code shipped with them would.
"""
