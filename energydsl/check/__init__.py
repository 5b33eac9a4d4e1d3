"""`energydsl check`: everything the compiler derived against an independent reference."""
