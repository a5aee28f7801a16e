from alert_helpers import alert_config  # noqa: F401  (fixture)
