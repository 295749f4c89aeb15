"""The organisation tree, as far as the caller may see it."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from api.authz import EVERYONE, access
from api.deps import CurrentStaff, SessionDep
from api.errors import NotFound
from api.schemas import DbId, OrgUnitOut
from store.models import OrgUnit

router = APIRouter(prefix="/org", tags=["organisation"])


@router.get("/units", response_model=list[OrgUnitOut], **access(EVERYONE))
def list_units(ctx: CurrentStaff, session: SessionDep) -> list[OrgUnit]:
    """Every unit in the caller's subtree, parents first."""
    return list(
        session.scalars(
            select(OrgUnit).where(OrgUnit.id.in_(ctx.unit_ids)).order_by(OrgUnit.path)
        )
    )


@router.get("/units/{unit_id}", response_model=OrgUnitOut, **access(EVERYONE))
def get_unit(unit_id: DbId, ctx: CurrentStaff, session: SessionDep) -> OrgUnit:
    """One unit of the caller's subtree."""
    unit = session.get(OrgUnit, unit_id)
    if unit is None or not ctx.can_see_unit(unit_id):
        raise NotFound(f"organisation unit {unit_id} not found")
    return unit
