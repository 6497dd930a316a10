"""Operations: metrics, telemetry, health and GPU checks, sd_notify, the request log."""
