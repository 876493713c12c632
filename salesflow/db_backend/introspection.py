"""Introspection that also finds tables named ``schema"."table`` (the service tables).

Django's PostgreSQL introspection looks a table up by ``pg_class.relname = <name>`` among the tables
visible on the search path, and django-tenants pins that path to ``public`` or the tenant schema. A
service table's ``db_table`` is ``contact"."contact_types``: no relname equals that string and
``contact`` is never on the path, so every lookup came back empty. The schema editor trusts those
answers, so it silently skipped dropping the indexes and unique constraints it could not "see", and
``flush`` left the service tables out.

Here a qualified name is split into (schema, table) and looked up by ``pg_namespace.nspname`` and
``pg_class.relname`` explicitly, independent of the search path. Bare names keep django-tenants'
behaviour unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import apps
from django.db.backends.postgresql.base import psycopg_version
from django.db.backends.postgresql.introspection import FieldInfo, TableInfo
from django.db.backends.utils import CursorWrapper, split_identifier
from django.db.models import Index
from django_tenants.postgresql_backend.introspection import DatabaseSchemaIntrospection
from django_tenants.utils import get_public_schema_name
from psycopg import sql


def qualified_table_name(schema: str, table: str) -> str:
    """The ``db_table`` spelling of ``schema.table``; Django's quote_name turns it into ``"schema"."table"``."""
    return schema + '"."' + table


class QualifiedNameIntrospection(DatabaseSchemaIntrospection):
    def _name_for(self, schema: str, table: str) -> str:
        """How a model's db_table spells a relation: bare where the search path finds it, else qualified."""
        if schema in (self.connection.schema_name, get_public_schema_name()):
            return table
        return qualified_table_name(schema, table)

    @staticmethod
    def _table_oid(cursor: CursorWrapper, schema: str, table: str) -> int | None:
        """OID of table ``schema.table`` (None when missing: the lookups then find nothing, as Django's do)."""
        cursor.execute(
            """
            SELECT c.oid
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('f', 'm', 'p', 'r', 'v')
            """,
            [schema, table],
        )
        row = cursor.fetchone()
        return row[0] if row else None

    @staticmethod
    def _qualified_schemas() -> list[str]:
        """Schemas that installed models name in a qualified db_table: the service schemas."""
        schemas = {split_identifier(model._meta.db_table)[0] for model in apps.get_models(include_auto_created=True)}
        return sorted(schemas - {""})

    def get_table_list(self, cursor: CursorWrapper) -> list[TableInfo]:
        """django-tenants' list (tables of the current schema), plus the service tables, qualified.

        The service tables are added in the public context only: they belong to shared apps, and
        django-tenants lists shared tables only there, so a flush in a tenant context still empties
        just that tenant. ``django_table_names(only_existing=True)`` (flush, sqlflush,
        TransactionTestCase) and ``migrate --fake-initial`` compare these names with
        ``model._meta.db_table``, hence the ``schema"."table`` spelling.
        """
        tables = super().get_table_list(cursor)
        schemas = self._qualified_schemas()
        if self.connection.schema_name != get_public_schema_name() or not schemas:
            return tables
        # Table types as in Django's get_table_list: partition "p", (materialized) view "v", else "t".
        cursor.execute(
            """
            SELECT
                n.nspname,
                c.relname,
                CASE WHEN c.relispartition THEN 'p' WHEN c.relkind IN ('m', 'v') THEN 'v' ELSE 't' END,
                obj_description(c.oid, 'pg_class')
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('f', 'm', 'p', 'r', 'v') AND n.nspname = ANY(%s)
            """,
            [schemas],
        )
        return tables + [
            TableInfo(qualified_table_name(schema, table), kind, comment)
            for schema, table, kind, comment in cursor.fetchall()
        ]

    def get_table_description(self, cursor: CursorWrapper, table_name: str) -> list[FieldInfo]:
        schema, table = split_identifier(table_name)
        if not schema:
            return super().get_table_description(cursor, table_name)
        # Same columns as Django's query, for the one table in that schema.
        cursor.execute(
            """
            SELECT
                a.attname,
                NOT (a.attnotnull OR (t.typtype = 'd' AND t.typnotnull)),
                pg_get_expr(ad.adbin, ad.adrelid),
                CASE WHEN collname = 'default' THEN NULL ELSE collname END,
                a.attidentity != '',
                col_description(a.attrelid, a.attnum)
            FROM pg_attribute a
            LEFT JOIN pg_attrdef ad ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
            LEFT JOIN pg_collation co ON a.attcollation = co.oid
            JOIN pg_type t ON a.atttypid = t.oid
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
            """,
            [self._table_oid(cursor, schema, table)],
        )
        field_map = {line[0]: line[1:] for line in cursor.fetchall()}
        cursor.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(schema, table)).as_string())
        # As in Django: psycopg >= 3.2 names extension types (hstore) whose OIDs vary per database.
        type_display_available = psycopg_version() >= (3, 2)
        return [
            FieldInfo(
                line.name,
                line.type_display if type_display_available and line.type_display == "hstore" else line.type_code,
                line.internal_size if line.display_size is None else line.display_size,
                line.internal_size,
                None if line.precision == 2**16 - 1 else line.precision,
                None if line.scale == 2**16 - 1 else line.scale,
                *field_map[line.name],
            )
            for line in cursor.description
        ]

    def get_sequences(
        self, cursor: CursorWrapper, table_name: str, table_fields: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        """Sequences owned by the table's columns; qualified names, since the schema editor puts them in DDL."""
        schema, table = split_identifier(table_name)
        if not schema:
            return super().get_sequences(cursor, table_name, table_fields)
        cursor.execute(
            """
            SELECT sn.nspname, s.relname, a.attname
            FROM pg_class s
            JOIN pg_namespace sn ON sn.oid = s.relnamespace
            JOIN pg_depend d ON d.objid = s.oid
                AND d.classid = 'pg_class'::regclass
                AND d.refclassid = 'pg_class'::regclass
            JOIN pg_attribute a ON d.refobjid = a.attrelid AND d.refobjsubid = a.attnum
            WHERE s.relkind = 'S' AND d.refobjid = %s
            """,
            [self._table_oid(cursor, schema, table)],
        )
        return [
            {"name": self._name_for(seq_schema, seq_name), "table": table_name, "column": column}
            for seq_schema, seq_name, column in cursor.fetchall()
        ]

    def get_relations(self, cursor: CursorWrapper, table_name: str) -> dict[str, tuple[str, str, Any]]:
        """``{column: (target column, target table, db_on_delete)}``; targets spelled like their db_table.

        Unlike Django's query this keeps foreign keys into other schemas: the target's name says
        which schema it is in, so nothing is ambiguous.
        """
        schema, table = split_identifier(table_name)
        if not schema:
            return super().get_relations(cursor, table_name)
        cursor.execute(
            """
            SELECT a1.attname, n2.nspname, c2.relname, a2.attname, con.confdeltype
            FROM pg_constraint con
            JOIN pg_class c2 ON con.confrelid = c2.oid
            JOIN pg_namespace n2 ON c2.relnamespace = n2.oid
            JOIN pg_attribute a1 ON con.conrelid = a1.attrelid AND a1.attnum = con.conkey[1]
            JOIN pg_attribute a2 ON con.confrelid = a2.attrelid AND a2.attnum = con.confkey[1]
            WHERE con.conrelid = %s AND con.contype = 'f'
            """,
            [self._table_oid(cursor, schema, table)],
        )
        return {
            column: (target_column, self._name_for(target_schema, target_table), self.on_delete_types.get(on_delete))
            for column, target_schema, target_table, target_column, on_delete in cursor.fetchall()
        }

    def get_constraints(self, cursor: CursorWrapper, table_name: str) -> dict[str, dict[str, Any]]:
        """Django's two queries (constraints, then indexes), for the one table in that schema.

        This is what the schema editor asks before it drops a unique constraint, an index, a
        foreign key or a unique_together, and what RenameIndex(old_fields=...) searches; the primary
        key columns (get_primary_key_column(s)) come from here too.
        """
        schema, table = split_identifier(table_name)
        if not schema:
            return super().get_constraints(cursor, table_name)
        table_oid = self._table_oid(cursor, schema, table)
        constraints: dict[str, dict[str, Any]] = {}
        cursor.execute(
            """
            SELECT
                c.conname,
                array(
                    SELECT attname
                    FROM unnest(c.conkey) WITH ORDINALITY cols(colid, arridx)
                    JOIN pg_attribute AS ca ON cols.colid = ca.attnum
                    WHERE ca.attrelid = c.conrelid
                    ORDER BY cols.arridx
                ),
                c.contype,
                (SELECT ARRAY[fkn.nspname, fkc.relname, fka.attname]
                FROM pg_attribute AS fka
                JOIN pg_class AS fkc ON fka.attrelid = fkc.oid
                JOIN pg_namespace AS fkn ON fkc.relnamespace = fkn.oid
                WHERE fka.attrelid = c.confrelid AND fka.attnum = c.confkey[1]),
                cl.reloptions
            FROM pg_constraint AS c
            JOIN pg_class AS cl ON c.conrelid = cl.oid
            WHERE c.conrelid = %s AND c.contype != 'n'
            """,
            [table_oid],
        )
        for constraint, columns, kind, target, options in cursor.fetchall():
            constraints[constraint] = {
                "columns": columns,
                "primary_key": kind == "p",
                "unique": kind in ["p", "u"],
                "foreign_key": (self._name_for(target[0], target[1]), target[2]) if kind == "f" else None,
                "check": kind == "c",
                "index": False,
                "definition": None,
                "options": options,
            }
        cursor.execute(
            """
            SELECT
                indexname,
                array_agg(attname ORDER BY arridx),
                indisunique,
                indisprimary,
                array_agg(ordering ORDER BY arridx),
                amname,
                exprdef,
                s2.attoptions
            FROM (
                SELECT
                    c2.relname AS indexname, idx.*, attr.attname, am.amname,
                    CASE
                        WHEN idx.indexprs IS NOT NULL THEN pg_get_indexdef(idx.indexrelid)
                    END AS exprdef,
                    CASE am.amname
                        WHEN %s THEN
                            CASE (option & 1) WHEN 1 THEN 'DESC' ELSE 'ASC' END
                    END AS ordering,
                    c2.reloptions AS attoptions
                FROM (
                    SELECT *
                    FROM pg_index i, unnest(i.indkey, i.indoption) WITH ORDINALITY koi(key, option, arridx)
                    WHERE i.indrelid = %s
                ) idx
                LEFT JOIN pg_class c2 ON idx.indexrelid = c2.oid
                LEFT JOIN pg_am am ON c2.relam = am.oid
                LEFT JOIN pg_attribute attr ON attr.attrelid = idx.indrelid AND attr.attnum = idx.key
            ) s2
            GROUP BY indexname, indisunique, indisprimary, amname, exprdef, attoptions
            """,
            [self.index_default_access_method, table_oid],
        )
        for index, columns, unique, primary, orders, type_, definition, options in cursor.fetchall():
            if index in constraints:
                continue
            # Django's rule: a plain btree index (not contrib.postgres' BTreeIndex, no options) is "idx".
            basic_index = type_ == self.index_default_access_method and not index.endswith("_btree") and options is None
            constraints[index] = {
                "columns": columns if columns != [None] else [],
                "orders": orders if orders != [None] else [],
                "primary_key": primary,
                "unique": unique,
                "foreign_key": None,
                "check": False,
                "index": True,
                "type": Index.suffix if basic_index else type_,
                "definition": definition,
                "options": options,
            }
        return constraints
