"""The schema head Tidings checks at startup is the head of its Alembic migrations."""

from alembic.config import Config
from alembic.script import ScriptDirectory

from tidings.store.db import MIGRATIONS_DIR, SCHEMA_HEAD


def test_schema_head_matches_the_newest_migration() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_heads() == [SCHEMA_HEAD]
