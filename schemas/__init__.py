"""The contract between ingest, inference and alerts: messages and configuration.

Every service imports its messages from here and nothing from the others.
"""

from schemas.alert import ALLOWED_TRANSITIONS, AlertState, DefectAlert, Finding, alert_id_for, part_alert_id
from schemas.config import (
    AlertPolicy,
    CameraConfig,
    CameraSource,
    InspectionZone,
    LineConfig,
    PatchsightConfig,
    Question,
    QuestionCategory,
    load_config,
    validate_config,
)
from schemas.dead_letter import DeadLetter
from schemas.errors import ConfigError, MalformedMessage, SchemaError, UnsupportedSchemaVersion
from schemas.feedback import EvidenceFrame, OperatorVerdict, ReviewItem, VerdictSubject
from schemas.frame import FRAME_SCHEMA_VERSION, FrameEncoding, FrameMessage, FrameMode
from schemas.part import PartAggregate, PartObservation, PartScores, aggregate_scores
from schemas.result import FrameRef, InspectionResult, QuestionScore, ResultStatus, Timing

__all__ = [
    "ALLOWED_TRANSITIONS", "AlertPolicy", "AlertState", "CameraConfig", "CameraSource", "ConfigError",
    "DeadLetter", "DefectAlert", "Finding", "InspectionZone", "PartAggregate", "PartObservation", "PartScores", "FRAME_SCHEMA_VERSION", "FrameEncoding", "FrameMessage", "FrameMode",
    "InspectionResult", "LineConfig", "MalformedMessage", "PatchsightConfig", "Question", "QuestionCategory",
    "QuestionScore", "ResultStatus", "SchemaError", "Timing", "UnsupportedSchemaVersion", "aggregate_scores", "alert_id_for", "part_alert_id",
    "load_config", "validate_config",
    # operator feedback, and where a result's frame lies
    "EvidenceFrame", "FrameRef", "OperatorVerdict", "ReviewItem", "VerdictSubject",
]
