from tollway.db import models  # noqa: F401 - registers every table on the metadata
from tollway.db.base import LogBase
from tollway.db.migrations.env_common import run

run(LogBase.metadata, "alembic_version_logs")
