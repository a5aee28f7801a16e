"""The contract between ingest, inference and alerts: messages and configuration.

Every service imports its messages from here and nothing from the others.
"""

from schemas.alert import ALLOWED_TRANSITIONS, AlertState, DefectAlert, alert_id_for
from schemas.config import (
    AlertPolicy,
    CameraConfig,
    CameraSource,
    LineConfig,
    PatchsightConfig,
    Question,
    QuestionCategory,
    load_config,
    validate_config,
)
from schemas.dead_letter import DeadLetter
from schemas.errors import ConfigError, MalformedMessage, SchemaError, UnsupportedSchemaVersion
from schemas.frame import FRAME_SCHEMA_VERSION, FrameEncoding, FrameMessage, FrameMode
from schemas.result import InspectionResult, QuestionScore, ResultStatus, Timing

__all__ = [
    "ALLOWED_TRANSITIONS", "AlertPolicy", "AlertState", "CameraConfig", "CameraSource", "ConfigError",
    "DeadLetter", "DefectAlert", "FRAME_SCHEMA_VERSION", "FrameEncoding", "FrameMessage", "FrameMode",
    "InspectionResult", "LineConfig", "MalformedMessage", "PatchsightConfig", "Question", "QuestionCategory",
    "QuestionScore", "ResultStatus", "SchemaError", "Timing", "UnsupportedSchemaVersion", "alert_id_for",
    "load_config", "validate_config",
]
