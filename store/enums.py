"""Kinds and states shared by the store, the API and the workers."""

from enum import StrEnum


class OrgKind(StrEnum):
    CITY_BUREAU = "city_bureau"
    DISTRICT_BUREAU = "district_bureau"
    JUDICIAL_OFFICE = "judicial_office"


class Role(StrEnum):
    OFFICER = "officer"
    OFFICE_HEAD = "office_head"
    DISTRICT_SUPERVISOR = "district_supervisor"
    CITY_ADMIN = "city_admin"
    AUDITOR = "auditor"


class Level(StrEnum):
    STRICT = "strict"
    NORMAL = "normal"
    LENIENT = "lenient"


class SupervisionType(StrEnum):
    PROBATION = "probation"
    PAROLE = "parole"
    TEMPORARY_RELEASE = "temporary_release"
    PUBLIC_SURVEILLANCE = "public_surveillance"


class MonitoringBasis(StrEnum):
    INFORMATION_CHECK = "information_check"  # phone location check (信息化核查)
    ELECTRONIC_DEVICE = "electronic_device"  # art. 29 electronic location device


class AlertKind(StrEnum):
    AREA_EXIT = "area_exit"
    EXCLUSION_ENTRY = "exclusion_entry"
    EXCLUSION_APPROACH = "exclusion_approach"  # early warning inside a zone's buffer
    CURFEW_BREACH = "curfew_breach"
    OVERDUE_RETURN = "overdue_return"
    COMMUNICATION_FAILURE = "communication_failure"
    LOCATION_FAILURE = "location_failure"
    PHONE_OFF = "phone_off"
    MISSED_ROLL_CALL = "missed_roll_call"
    SUSPECTED_SPOOFING = "suspected_spoofing"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class AlertStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
