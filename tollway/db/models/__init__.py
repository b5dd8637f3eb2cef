"""Every table, importable from one place (Alembic and the schema tests read the metadata)."""

from tollway.db.models.channel import Ability, Channel
from tollway.db.models.lease import LeaseHolder, QuotaLease
from tollway.db.models.log import Log
from tollway.db.models.option import Option
from tollway.db.models.quota_data import QuotaData
from tollway.db.models.redemption import Redemption, RedemptionLog
from tollway.db.models.setup import Setup
from tollway.db.models.task import Midjourney, Task
from tollway.db.models.token import Token
from tollway.db.models.topup import TopUp
from tollway.db.models.user import User
from tollway.db.models.verification import VerificationCode

__all__ = [
    "Ability",
    "Channel",
    "LeaseHolder",
    "Log",
    "Midjourney",
    "Option",
    "QuotaData",
    "QuotaLease",
    "Redemption",
    "RedemptionLog",
    "Setup",
    "Task",
    "Token",
    "TopUp",
    "User",
    "VerificationCode",
]
