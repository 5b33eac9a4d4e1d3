"""Stage 7, emit: planned methods -> the generated module's text (Jinja2 templates)."""
