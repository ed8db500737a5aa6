"""HTTP adapters: functions that turn a request into Python values (issue: adapters)."""
