from tollway.db import models  # noqa: F401 - registers every table on the metadata
from tollway.db.base import MainBase
from tollway.db.migrations.env_common import run

run(MainBase.metadata, "alembic_version")
