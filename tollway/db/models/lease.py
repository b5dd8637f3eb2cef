"""Quota leases: balance a worker process holds in custody so it can reserve without a database
round trip per request (see docs/adr/0003-quota-leases.md).

For every account: ``users.quota`` (or ``tokens.remain_quota``) + the sum of its lease amounts +
the sum of its consume-log quotas stays constant apart from deliberate credits and debits.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase

ACCOUNT_USER, ACCOUNT_TOKEN = 1, 2


class QuotaLease(MainBase):
    __tablename__ = "quota_leases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    holder: Mapped[str] = mapped_column(String(96))
    account_kind: Mapped[int] = mapped_column(SmallInteger)
    account_id: Mapped[int] = mapped_column(Integer)
    # May go below zero: spending settled beyond the lease is a debt paid when the lease returns.
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        Index("uq_quota_leases_holder_account", "holder", "account_kind", "account_id", unique=True),
        Index("idx_quota_leases_account", "account_kind", "account_id"),
    )


class LeaseHolder(MainBase):
    """A worker process that may hold leases; its heartbeat tells the others it is alive."""

    __tablename__ = "quota_lease_holders"

    holder: Mapped[str] = mapped_column(String(96), primary_key=True)
    started_at: Mapped[int] = mapped_column(BigInteger, default=0)
    heartbeat_at: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
