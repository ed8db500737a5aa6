"""Apps defined in importable modules, as users write them: workers import these by name."""
