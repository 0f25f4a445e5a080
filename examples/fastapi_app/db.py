"""The app's own database: its engine, its sessions, its declarative Base and Refund.

``DATABASE_URL`` names the database; without a driver the library picks the async one
(``postgresql://`` psycopg, ``mysql://`` aiomysql, ``sqlite://`` aiosqlite). The app and
the workflow share this one engine, so a refund and its approval run can commit together.
"""

from __future__ import annotations

import os
from decimal import Decimal

from sqlalchemy import Numeric, String, UniqueConstraint
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from workflow_persistence import make_async_engine

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///refunds.db")

engine = make_async_engine(DATABASE_URL)
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class Refund(Base):
    __tablename__ = "refunds"
    # One refund per order: a second one fails when the transaction commits.
    __table_args__ = (UniqueConstraint("order_id", name="uq_refunds_order_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # also its run's id
    order_id: Mapped[str] = mapped_column(String(64))
    customer: Mapped[str] = mapped_column(String(255))
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    status: Mapped[str] = mapped_column(String(16))  # pending, approved, rejected
