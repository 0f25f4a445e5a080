"""A refund desk: create a refund (its approval starts), list what waits, answer.

    alembic upgrade heads            # the app's table and the library's
    uvicorn main:app                 # DATABASE_URL=postgresql://... for PostgreSQL

Each request has its own AsyncSession; the workflow writes its run in that session, so the
refund and its run commit together, or neither does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated
from uuid import uuid4

from db import Refund, Session
from fastapi import Depends, FastAPI, HTTPException
from flow import approval, persistence
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from workflow_persistence import ConflictError, WorkflowNotFoundError

app = FastAPI(title="Refunds")


async def session() -> AsyncIterator[AsyncSession]:
    async with Session() as s:
        yield s  # leaving without a commit rolls back


Db = Annotated[AsyncSession, Depends(session)]


class NewRefund(BaseModel):
    order_id: str = Field(max_length=64)
    customer: str = Field(max_length=255)
    amount: Decimal = Field(gt=0, max_digits=10, decimal_places=2)


class RefundOut(BaseModel):
    id: str
    order_id: str
    customer: str
    amount: Decimal
    status: str


class Pending(BaseModel):
    id: str
    question: str
    risk: float
    version: int  # send it back with the answer: a stale answer is refused


class Answer(BaseModel):
    approve: bool
    version: int


def out(refund: Refund) -> RefundOut:
    return RefundOut(id=refund.id, order_id=refund.order_id, customer=refund.customer,
                     amount=refund.amount, status=refund.status)


@app.post("/refunds", status_code=201)
async def create_refund(new: NewRefund, db: Db) -> RefundOut:
    refund = Refund(id=uuid4().hex, status="pending", **new.model_dump())
    await approval.astart(
        {"amount": new.amount, "customer": new.customer},
        workflow_id=refund.id, metadata={"order_id": new.order_id}, session=db,
    )
    db.add(refund)
    try:
        await db.commit()  # the refund and its waiting run, together
    except IntegrityError:
        await db.rollback()  # and the run is gone with it
        raise HTTPException(409, f"order {new.order_id} already has a refund") from None
    return out(refund)


@app.get("/approvals")
async def waiting() -> list[Pending]:
    runs = await persistence.list(status="interrupted", workflow_name=approval.name)
    return [Pending(id=run.workflow_id, question=run.interrupt["question"],
                    risk=run.interrupt["risk"], version=run.version) for run in runs]


@app.post("/approvals/{refund_id}")
async def answer(refund_id: str, reply: Answer, db: Db) -> RefundOut:
    refund = await db.get(Refund, refund_id)
    if refund is None:
        raise HTTPException(404, f"no refund {refund_id}")
    try:
        run = await approval.aresume(
            refund_id, reply.approve, expected_version=reply.version, session=db
        )
    except (ConflictError, WorkflowNotFoundError):
        raise HTTPException(409, "already answered, or the question changed") from None
    refund.status = "approved" if run.result else "rejected"
    await db.commit()  # the decision and the finished run, together
    return out(refund)
