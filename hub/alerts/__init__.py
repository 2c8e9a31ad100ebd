"""GP alerts (``hub.alerts.v1``): one value per GP, patient, network and status, with a CDS Hooks card."""

from hub.alerts.alert import ALERT_NAMESPACE, alert_id_for, build_alert, build_card

__all__ = ["ALERT_NAMESPACE", "alert_id_for", "build_alert", "build_card"]
