"""Click commands, one module per stage. ``posterkg.cli`` registers them lazily."""
